"""Turning a URL path segment into a 20-byte key, exactly as OpenDHT's proxy does."""

import hashlib
import string

_HEX = set(string.hexdigits)


def parse_key(segment: str) -> bytes:
    """The first 40 characters as a hex hash (either case), unless they are not all hex or the hash is
    zero; otherwise the SHA-1 of the whole segment."""
    head = segment[:40]
    if len(head) == 40 and set(head) <= _HEX:
        key = bytes.fromhex(head)
        if any(key):
            return key
    return hashlib.sha1(segment.encode()).digest()
