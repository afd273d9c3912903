"""Who a proxy client is, for per-client caps, and holding one of a client's slots for a request.

A client is its host (`netgroup.host_of`: its IP address, not its port, since a client opens as many
connections as it likes; an IPv6 client is its /64, since one host is routinely given a whole /64 and
could otherwise take a new address per stream).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Full, Slots
from dhtmesh.proxy.errors import TooManyRequests


def client_of(request: web.Request) -> str:
    return host_of(request.remote or "")


@contextmanager
def client_slot(slots: Slots, request: web.Request, counter: str) -> Iterator[None]:
    """One of `slots` for the request's client while the block runs; a 429 (counted under `counter`)
    when its client, or everyone, holds all it may."""
    client = client_of(request)
    try:
        slots.take(client)
    except Full as full:
        raise TooManyRequests(f"{full} (at most {slots.per_address} per address)", counter) from full
    try:
        yield
    finally:
        slots.give(client)
