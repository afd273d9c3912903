"""The RPC layer's own contracts: async handlers on the endpoint (answered when ready, refusals and
failures enveloped as for sync ones, also for a request that came in pieces)."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from dhtmesh.node.stats import Counters
from dhtmesh.node.wire.endpoint import Endpoint, Request, RpcRefused
from dhtmesh.node.wire.ratelimit import Address

from support import loopback_host


async def open_endpoint(node_id: bytes, trusted: bool = True) -> Endpoint:
    endpoint = Endpoint(node_id, lambda nonce: [b"k", b"s"], Counters(), is_trusted=lambda address: trusted)
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint, local_addr=(loopback_host(), 0))
    return endpoint


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    caller, server = await open_endpoint(b"c" * 20), await open_endpoint(b"s" * 20)
    yield caller, server
    for endpoint in (caller, server):
        assert endpoint.transport is not None
        endpoint.transport.close()


async def slow_echo(request: Request) -> dict:
    await asyncio.sleep(0.05)  # the loop serves other datagrams meanwhile
    return {"echo": request.body.get("e")}


async def slow_refusal(request: Request) -> None:
    await asyncio.sleep(0)
    raise RpcRefused("not today")


async def slow_bug(request: Request) -> None:
    await asyncio.sleep(0)
    raise KeyError("a handler's own bug")


async def test_an_async_handler_is_answered_when_its_reply_is_ready(pair: tuple[Endpoint, Endpoint]) -> None:
    caller, server = pair
    server.route("dm_echo", slow_echo)
    server.route("dm_now", lambda request: "sync")
    address: Address = server.address
    slow = asyncio.create_task(caller.call(address, "dm_echo", {"e": 1}))
    assert (await caller.call(address, "dm_now", {})).payload == "sync"  # not held up by the slow one
    assert not slow.done()
    assert (await slow).payload == {"echo": 1}


async def test_an_async_handler_refuses_and_fails_as_a_sync_one(pair: tuple[Endpoint, Endpoint]) -> None:
    caller, server = pair
    server.route("dm_no", slow_refusal)
    server.route("dm_bug", slow_bug)
    with pytest.raises(RpcRefused, match="not today"):
        await caller.call(server.address, "dm_no", {})
    with pytest.raises(RpcRefused, match="internal error"):
        await caller.call(server.address, "dm_bug", {})
    counts = server._counters.snapshot()
    assert counts["refused_requests"] == 1 and counts["handler_errors"] == 1


async def test_an_async_handler_answers_a_request_sent_in_pieces(pair: tuple[Endpoint, Endpoint]) -> None:
    """`dm_done` hands back the inner request's envelope: from an async handler, once it is ready."""
    caller, server = pair
    server.route("dm_echo", slow_echo)
    big = b"x" * 5000  # several datagrams each way
    reply = await caller.call(server.address, "dm_echo", {"e": big})
    assert reply.payload == {"echo": big}
