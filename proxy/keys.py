"""Turning a URL path segment into a 20-byte key, exactly as OpenDHT's proxy does: the segment as the
client sent it (not percent-decoded), its first 40 characters as a hex hash, or else its SHA-1."""

import hashlib
import string

from aiohttp import web

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


def path_key(request: web.Request, name: str = "key") -> bytes:
    """The key in the route's `{name}` segment. OpenDHT hashes the segment raw (`/key/a%20b` is
    SHA-1("a%20b")), while aiohttp's `match_info` holds it percent-decoded, so the segment is taken from
    the raw path at the variable's position (aiohttp routes on a path that keeps `%2F`, so the
    positions of the raw and the routed segments agree)."""
    resource = request.match_info.route.resource
    assert resource is not None, "only routed requests carry a key"
    position = resource.canonical.split("/").index(f"{{{name}}}")
    return parse_key(request.rel_url.raw_parts[position])
