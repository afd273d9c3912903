"""The RPC layer's own contracts: async handlers on the endpoint (answered when ready, refusals and
failures enveloped as for sync ones, also for a request that came in pieces), and the typed `dm_*`
messages, which spell the wire's keys exactly as before and check every field a peer chooses."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.rpcs.find import FindReply, FindRequest
from dhtmesh.node.rpcs.listen import Notification, SubscribeRequest
from dhtmesh.node.rpcs.storing import Carried, StoreRequest, versions_from_wire
from dhtmesh.node.stats import Counters
from dhtmesh.node.values.value import Value
from dhtmesh.node.wire.answering import MAX_ANSWERING_PER_HOST
from dhtmesh.node.wire.endpoint import Endpoint, Request, RpcRefused
from dhtmesh.node.wire.ratelimit import Address
from dhtmesh.testing import eventually, loopback_host


async def open_endpoint(node_id: bytes, trusted: bool = True, host: str | None = None) -> Endpoint:
    endpoint = Endpoint(node_id, lambda nonce: [b"k", b"s"], Counters(), is_trusted=lambda address: trusted)
    local = (host or loopback_host(), 0)
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint, local_addr=local)
    return endpoint


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    caller, server = await open_endpoint(b"c" * 20), await open_endpoint(b"s" * 20)
    yield caller, server
    for endpoint in (caller, server):
        await endpoint.close()


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
    ready = asyncio.Event()

    async def waiting_echo(request: Request) -> dict:
        await ready.wait()  # the loop serves other datagrams meanwhile
        return {"echo": request.body.get("e")}

    server.route("dm_echo", waiting_echo)
    server.route("dm_now", lambda request: "sync")
    address: Address = server.address
    slow = asyncio.create_task(caller.call(address, "dm_echo", {"e": 1}))
    assert (await caller.call(address, "dm_now", {})).payload == "sync"  # not held up by the slow one
    assert not slow.done()
    ready.set()
    assert (await slow).payload == {"echo": 1}


async def blocked(server: Endpoint, name: str) -> tuple[asyncio.Event, list[Request]]:
    """Route `name` to a handler that records each request and answers once the event is set."""
    release, served = asyncio.Event(), []

    async def handler(request: Request) -> bool:
        served.append(request)
        await release.wait()
        return True

    server.route(name, handler)
    return release, served


async def test_a_retry_is_not_served_again_while_its_first_is_being_answered(pair: tuple[Endpoint, Endpoint]) -> None:
    caller, server = pair
    release, served = await blocked(server, "dm_slow")
    message_id = b"m" * 20
    for _ in range(3):  # a caller's retries carry the first attempt's message id
        caller.send_request(server.address, "dm_slow", {}, message_id)
    await eventually(lambda: server._counters.snapshot().get("retries_while_answering") == 2)
    assert len(served) == 1
    release.set()
    await eventually(lambda: len(server._answering) == 0)
    caller.send_request(server.address, "dm_slow", {}, message_id)  # answered: a new request again
    await eventually(lambda: len(served) == 2)


async def test_async_replies_in_the_works_are_bounded_per_host(pair: tuple[Endpoint, Endpoint]) -> None:
    """Past the cap, the handler is not run at all: the asker is told busy, whatever port it uses."""
    caller, server = pair
    other_port = await open_endpoint(b"o" * 20, host=caller.address[0])  # the caller's host, another port
    release, served = await blocked(server, "dm_slow")
    try:
        for index in range(MAX_ANSWERING_PER_HOST):
            sender = caller if index % 2 else other_port
            sender.send_request(server.address, "dm_slow", {}, index.to_bytes(20, "big"))
        await eventually(lambda: len(served) == MAX_ANSWERING_PER_HOST)
        with pytest.raises(RpcRefused, match="busy"):
            await caller.call(server.address, "dm_slow", {})
        with pytest.raises(RpcRefused, match="busy"):  # nor when the request came in pieces (dm_done)
            await caller.call(server.address, "dm_slow", {"e": b"x" * 5000})
        assert len(served) == MAX_ANSWERING_PER_HOST and server._counters.snapshot()["busy_replies"] == 2
        release.set()
        assert (await caller.call(server.address, "dm_slow", {})).payload is True  # room again
    finally:
        release.set()
        await other_port.close()


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


KEY = b"k" * 20
VALUE = Value(7, b"data")


def test_requests_spell_the_wire_keys_as_before() -> None:
    carried = Carried(VALUE, 60.0)
    assert FindRequest(KEY).to_wire() == {"t": KEY}
    assert FindRequest(KEY, 16, True, 5, 3).to_wire() == {"t": KEY, "p": 16, "v": True, "w": 5, "y": 3}
    assert FindRequest(KEY, carried=carried).to_wire() == {"t": KEY, "s": VALUE.to_wire(), "ttl": 60.0}
    by = b"b" * 20
    store = StoreRequest(KEY, Carried(VALUE, 60.0, by)).to_wire()
    assert store == {"k": KEY, "v": VALUE.to_wire(), "ttl": 60.0, "by": by}
    assert SubscribeRequest(KEY, 30.0).to_wire() == {"k": KEY, "ttl": 30.0}
    assert Notification.of(KEY, VALUE, True).to_wire() == {"k": KEY, "v": VALUE.to_wire(), "x": True}


def test_a_find_round_trips_and_its_carried_value_is_read_only_from_a_proven_sender() -> None:
    wire = FindRequest(KEY, 8, True, None, 2, Carried(VALUE, 60.0)).to_wire()
    assert FindRequest.from_wire(wire, proven=True) == FindRequest(KEY, 8, True, None, 2, Carried(VALUE, 60.0))
    assert FindRequest.from_wire(wire, proven=False).carried is None
    unproven_garbage = {"t": KEY, "s": "not a value"}  # ignored unread, as before
    assert FindRequest.from_wire(unproven_garbage, proven=False) == FindRequest(KEY)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"t": b"short"}, "target must be 20 bytes"),
        ({"t": KEY, "p": -1}, "page offset must be an integer"),
        ({"t": KEY, "p": True}, "page offset must be an integer"),
        ({"t": KEY, "v": True, "y": 1 << 16}, "value type must be an integer"),
        ({"t": KEY, "v": True, "w": 0}, "value id must be an integer"),
        ({"t": KEY, "s": VALUE.to_wire(), "ttl": 60, "by": b"x"}, "by must be a 20-byte node id"),
        ({"t": KEY, "s": [1, 2], "ttl": 60}, "invalid value"),
        ({"t": KEY, "s": VALUE.to_wire(), "ttl": 0.5}, "ttl must be a number"),
    ],
)
def test_a_find_refuses_what_a_peer_got_wrong(body: dict, reason: str) -> None:
    with pytest.raises(RpcRefused, match=reason):
        FindRequest.from_wire(body, proven=True)


def test_a_find_reply_round_trips_and_drops_what_is_malformed() -> None:
    contact = Contact(b"c" * 20, "127.0.0.9", 4222)
    reply = FindReply([contact], [VALUE], [(b"o", 3, 1)], None, True)
    wire = reply.to_wire()
    assert wire == {
        "nodes": [contact.to_wire()],
        "vals": [VALUE.to_wire()],
        "refs": [[b"o", 3, 1]],
        "more": None,
        "stored": True,
    }
    assert FindReply.from_wire(wire) == reply
    hostile = {
        "nodes": [["x"], contact.to_wire()],
        "vals": [[1], VALUE.to_wire()],
        "refs": [[b"o", "3", 1]],
        "more": True,
        "stored": "yes",
    }
    assert FindReply.from_wire(hostile) == FindReply([contact], [VALUE], [], None, False)
    assert FindReply.from_wire("not a map") == FindReply([], [], [], None, None)


def test_versions_from_a_peer_keep_only_well_formed_entries() -> None:
    assert versions_from_wire([[b"o", 1, 2], [b"o", "1", 2], "junk"]) == {(b"o", 1): 2}
    assert versions_from_wire({"not": "a list"}) is None
