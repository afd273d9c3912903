"""Turning a URL path segment into a 20-byte key, exactly as OpenDHT's proxy does: the segment as the
client sent it (not percent-decoded), hashed by the contract's `parse_key`."""

from aiohttp import web

from dhtmesh.api.keys import parse_key


def path_key(request: web.Request, name: str = "key") -> bytes:
    """The key in the route's `{name}` segment. OpenDHT hashes the segment raw (`/key/a%20b` is
    SHA-1("a%20b")), while aiohttp's `match_info` holds it percent-decoded, so the segment is taken from
    the raw path at the variable's position (aiohttp routes on a path that keeps `%2F`, so the
    positions of the raw and the routed segments agree)."""
    resource = request.match_info.route.resource
    assert resource is not None, "only routed requests carry a key"
    position = resource.canonical.split("/").index(f"{{{name}}}")
    return parse_key(request.rel_url.raw_parts[position])
