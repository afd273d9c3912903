"""The real `kademlia` 2.2.3 `Server` as a foreign peer of a dhtmesh mesh, in one event loop on 127.0.0.1.

A stock peer bootstraps from dhtmesh nodes, stores and reads plain values through them (str, bytes and
numbers), and is answered in the stock wire format, but it can never prove an id, so it never enters a
dhtmesh routing table and is never sent dhtmesh's own RPCs.
"""

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
from kademlia.network import Server
from kademlia.protocol import KademliaProtocol

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.values import Value, new_value_id
from dhtmesh.testing import watch_datagrams

LOCALHOST = "127.0.0.1"
TEXT = "text/plain"
MSGPACK = "application/msgpack"
MAX_DATAGRAM = 1400  # the most dhtmesh may send in one datagram
STOCK_WAIT = 1.0  # seconds a stock peer waits for an answer

Address = tuple[str, int]


class PromptProtocol(KademliaProtocol):
    """The stock protocol, giving up on an unanswered request after 1 s instead of rpcudp's 5 (every
    answer on loopback takes milliseconds; a request dhtmesh drops unread would cost 5 s a test)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._wait_timeout = STOCK_WAIT


class PromptServer(Server):
    protocol_class = PromptProtocol


@asynccontextmanager
async def stock_server() -> AsyncIterator[Server]:
    """A stock `kademlia` Server listening on a free 127.0.0.1 port; stopped on exit."""
    server = PromptServer()
    await server.listen(0, interface=LOCALHOST)
    try:
        yield server
    finally:
        server.stop()


def address_of(server: Server) -> Address:
    host, port = server.transport.get_extra_info("sockname")[:2]
    return host, port


def dkey(key: str) -> bytes:
    """The DHT key a stock peer uses for `key`: SHA-1 of it (`kademlia.utils.digest`)."""
    return hashlib.sha1(key.encode()).digest()


@pytest.fixture
async def mesh(make_mesh: Callable[..., Any]) -> list[DhtNode]:
    return await make_mesh(3)


@pytest.fixture
async def stock(mesh: list[DhtNode]) -> AsyncIterator[Server]:
    """A stock Server bootstrapped from the first dhtmesh node."""
    async with stock_server() as server:
        await server.bootstrap([mesh[0].address])
        yield server


def assert_no_handler_errors(nodes: list[DhtNode]) -> None:
    for node in nodes:
        assert node.counters.get("handler_errors") == 0, node.counters.snapshot()


# ---- (a) bootstrap ----------------------------------------------------------------------------------------


async def test_stock_server_bootstraps_from_a_dhtmesh_node(mesh: list[DhtNode]) -> None:
    async with stock_server() as server:
        found = await server.bootstrap([mesh[0].address])

        assert {node.id for node in found} == {node.node_id for node in mesh}
        assert set(server.bootstrappable_neighbors()) == {node.address for node in mesh}
        # It learned the other two nodes from dhtmesh's stock-format find_node replies.
        assert sum(node.counters.get("rpc_in.find_node") for node in mesh) >= len(mesh)
        assert mesh[0].counters.get("rpc_in.ping") >= 1
    assert_no_handler_errors(mesh)


# ---- (b), (c) str values both ways -------------------------------------------------------------------------


async def test_stock_set_is_read_by_dhtmesh_get(mesh: list[DhtNode], stock: Server) -> None:
    assert await stock.set("k", "v") is True

    for node in mesh:
        values = await node.get(dkey("k"))
        assert [(v.data, v.utype, v.signed) for v in values] == [(b"v", TEXT, False)]
    assert all(node.store.get(dkey("k")) for node in mesh), "a stock set stores on every one of the k nearest"
    assert_no_handler_errors(mesh)


async def test_dhtmesh_put_is_read_by_stock_get(mesh: list[DhtNode], stock: Server) -> None:
    result = await mesh[1].put(dkey("k2"), Value(new_value_id(), b"hello", utype=TEXT))
    assert result.replicas == len(mesh) - 1

    assert await stock.get("k2") == "hello"
    assert sum(node.counters.get("rpc_in.find_value") for node in mesh) >= 1
    assert_no_handler_errors(mesh)


async def test_stock_get_of_a_missing_key_returns_none(mesh: list[DhtNode], stock: Server) -> None:
    assert await stock.get("never stored") is None
    assert_no_handler_errors(mesh)


# ---- (d) the stock peer never enters a routing table ----------------------------------------------------------


async def test_stock_peer_never_enters_a_dhtmesh_routing_table(
    mesh: list[DhtNode], stock: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rpcudp.protocol")
    stock_id = stock.node.id
    assert await stock.set("k3", "v3") is True
    assert await stock.get("k3") == "v3"
    await mesh[2].put(dkey("k4"), Value(new_value_id(), b"v4", utype=TEXT))
    assert await stock.get("k4") == "v4"

    for node in mesh:
        assert stock_id not in node.table
        assert stock_id not in {contact.node_id for contact in await node.lookup(stock_id)}
    # dhtmesh never sent the stock peer one of its own RPCs (rpcudp would log each one it cannot serve).
    assert not [r for r in caplog.records if "rpc_dm_" in r.getMessage()]

    # Asked to prove itself, the stock peer cannot (it has no dm_hello), so it is still not admitted.
    assert await mesh[0].admission.challenge(address_of(stock)) is None
    assert stock_id not in mesh[0].table
    assert [r for r in caplog.records if "rpc_dm_hello" in r.getMessage()]
    assert_no_handler_errors(mesh)


# ---- (e) bytes and numbers --------------------------------------------------------------------------------------

PLAIN_VALUES: dict[str, tuple[Any, bytes, str]] = {
    "bytes": (b"\x00\xffraw bytes\x80", b"\x00\xffraw bytes\x80", ""),
    "int": (42, msgpack.packb(42), MSGPACK),
    "negative int": (-7, msgpack.packb(-7), MSGPACK),
    "big int": (2**62 + 1, msgpack.packb(2**62 + 1), MSGPACK),
    "float": (2.5, msgpack.packb(2.5), MSGPACK),
    "bool": (True, msgpack.packb(True), MSGPACK),
    "non-ascii str": ("grüß ✓", "grüß ✓".encode(), TEXT),
}


@pytest.mark.parametrize("plain, data, utype", PLAIN_VALUES.values(), ids=PLAIN_VALUES.keys())
async def test_stock_value_types_round_trip_from_stock_to_dhtmesh(
    mesh: list[DhtNode], stock: Server, plain: Any, data: bytes, utype: str
) -> None:
    key = f"from stock {plain!r}"
    assert await stock.set(key, plain) is True
    values = await mesh[1].get(dkey(key))
    assert [(v.data, v.utype) for v in values] == [(data, utype)]
    assert_no_handler_errors(mesh)


@pytest.mark.parametrize("plain, data, utype", PLAIN_VALUES.values(), ids=PLAIN_VALUES.keys())
async def test_stock_value_types_round_trip_from_dhtmesh_to_stock(
    mesh: list[DhtNode], stock: Server, plain: Any, data: bytes, utype: str
) -> None:
    key = f"from dhtmesh {plain!r}"
    await mesh[2].put(dkey(key), Value(new_value_id(), data, utype=utype))
    got = await stock.get(key)
    assert got == plain and type(got) is type(plain)
    assert_no_handler_errors(mesh)


async def test_two_stock_peers_exchange_values_through_the_mesh(mesh: list[DhtNode], stock: Server) -> None:
    """The second stock peer knows only dhtmesh nodes (the first is never routed to), so dhtmesh serves it."""
    assert await stock.set("shared bytes", b"\x01\x02") is True
    assert await stock.set("shared int", 1234) is True
    async with stock_server() as other:
        await other.bootstrap([mesh[2].address])
        assert address_of(stock) not in set(other.bootstrappable_neighbors())
        assert await other.get("shared bytes") == b"\x01\x02"
        assert await other.get("shared int") == 1234
    assert_no_handler_errors(mesh)


async def test_values_too_big_for_one_datagram_do_not_travel_between_stock_peers_and_dhtmesh(
    mesh: list[DhtNode], stock: Server
) -> None:
    """A datagram larger than an Ethernet frame is dropped unread (decoding one is where a flood of them
    costs), so a stock `store` of 3 KB is not taken; a 1 KB value, taken, would need a reply bigger than
    a stock peer's request allows (flaw F11: a reply to an unproven address is a small multiple of the
    request), so dhtmesh answers find_value with contacts instead. dhtmesh sends nothing over 1,400 B."""
    with watch_datagrams(mesh) as sent:
        medium = "y" * 1000
        assert await stock.set("medium", medium) is True
        assert [v.data for v in await mesh[0].get(dkey("medium"))] == [medium.encode()]
        async with stock_server() as other:
            await other.bootstrap([mesh[1].address])
            assert await other.get("medium") is None
        # Last: unanswered, the stock peer drops every node from its routing table (its flaw F4).
        await stock.set("big", "x" * 3000)
        assert sum(node.counters.get("oversized_datagrams") for node in mesh) > 0
        assert all(node.store.get(dkey("big")) == [] for node in mesh)
        assert_no_handler_errors(mesh)
    assert max(len(datagram) for _, datagram in sent) <= MAX_DATAGRAM
