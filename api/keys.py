"""Keys as OpenDHT's proxy and clients name them: a URL path segment's first 40 characters as a hex
hash, or else its SHA-1."""

import hashlib
import string

_HEX = set(string.hexdigits)


def parse_key(segment: str) -> bytes:
    """The first 40 characters as a hex hash (either case), unless they are not all hex or the hash is
    zero; otherwise the SHA-1 of the whole segment (its bytes as received: the request line is read
    with `surrogateescape`, so bytes that are not UTF-8 hash as themselves)."""
    head = segment[:40]
    if len(head) == 40 and set(head) <= _HEX:
        key = bytes.fromhex(head)
        if any(key):
            return key
    return hashlib.sha1(segment.encode("utf-8", "surrogateescape")).digest()
