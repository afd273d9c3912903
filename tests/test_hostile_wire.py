"""Hostile datagrams against live `DhtNode`s on their real UDP sockets (127.0.0.1 only).

A raw sender (`RawPeer`, a bare asyncio UDP socket) sends hand-made frames: undecodable bytes, requests of
the wrong shape, stock and dhtmesh RPCs with wrong arguments, forged or replayed signed values, and abuse of
the piece-transfer RPCs. Afterwards the node must still answer a stock-format `ping`, the mesh must still
put and get, the right counters must have moved, and `handler_errors` must stay 0 (a handler crash is a bug).

Ordering trick used throughout: the node serves every datagram synchronously, in arrival order, and
loopback keeps order, so once the reply to a `ping` sent *after* a hostile datagram has arrived, the hostile
datagram has been fully handled (and any reply to it has arrived too).
"""

import asyncio
import contextlib
import hashlib
import ipaddress
import math
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtmesh.crypto import Identity
from dhtmesh.node.admission import proof_message
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.storage.store import ValueStore
from dhtmesh.node.values import Value, Verdict, new_value_id, sign_value
from dhtmesh.node.wire.fragments import MAX_PENDING_BYTES_PER_PEER, MAX_PIECES, PIECE_SIZE
from dhtmesh.testing import FAST, eventually, loopback_host, watch_datagrams

Address = tuple[str, int]
LOCALHOST = "127.0.0.1"
# rpcudp framing, written out here rather than taken from the codec under test.
REQUEST, RESPONSE = 0x00, 0x01
HEADER_SIZE = 21  # type byte + 20-byte message id
MAX_DATAGRAM = 1400  # the most dhtmesh may send in one datagram
REPLY_TIMEOUT = 2.0
STOCK_RPCS = ("ping", "store", "find_node", "find_value", "stun")
MESH_RPCS = (
    "dm_hello",
    "dm_find",
    "dm_store",
    "dm_sub",
    "dm_unsub",
    "dm_notify",
    "dm_versions",
    "dm_fetch",
    "dm_part",
    "dm_done",
    "dm_pull",
)
ALL_RPCS = STOCK_RPCS + MESH_RPCS
# The fields dhtmesh RPC bodies use: fuzzed maps draw their keys mostly from these, to get past the first check.
BODY_FIELDS = ("t", "v", "p", "k", "o", "i", "ttl", "x", "c", "d", "n")
# k=3 in a 5-node mesh: some node holds no copy of a key, so its get must pull values over the wire.
FAST_K3 = replace(FAST, k=3)


# ---- a raw UDP peer ---------------------------------------------------------------------------------------


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket: sends hand-made datagrams, collects replies by message id, and records the
    requests a node sends it (the node's identity challenges), optionally answering them via `answer`."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sender_id = os.urandom(20)
        self.replies: dict[bytes, Any] = {}
        self.requests: list[tuple[bytes, Any]] = []
        self.answer: Callable[[bytes, Any], Any] | None = None
        self._waiters: dict[bytes, asyncio.Future[Any]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) <= HEADER_SIZE:
            return
        message_id = data[1:HEADER_SIZE]
        body = msgpack.unpackb(data[HEADER_SIZE:], raw=False, strict_map_key=False)
        if data[0] == RESPONSE:
            self.replies[message_id] = body
            waiter = self._waiters.pop(message_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(body)
        elif data[0] == REQUEST:
            self.requests.append((message_id, body))
            if self.answer is not None:
                reply = self.answer(message_id, body)
                self.send(frame(RESPONSE, message_id, reply), (addr[0], addr[1]))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, datagram: bytes, to: Address) -> None:
        assert self.transport is not None and ipaddress.ip_address(to[0]).is_loopback
        self.transport.sendto(datagram, to)

    async def call(self, to: Address, name: str, args: Any, patience: float = REPLY_TIMEOUT) -> Any:
        """Send `[name, args]` and return the reply body; raises `TimeoutError` if none comes."""
        message_id = os.urandom(20)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[message_id] = waiter
        self.send(frame(REQUEST, message_id, [name, args]), to)
        try:
            return await asyncio.wait_for(waiter, patience)
        finally:
            self._waiters.pop(message_id, None)

    async def mesh_call(self, node: DhtNode, name: str, body: Any) -> Any:
        """A dhtmesh RPC from this peer's (unproven) id; returns the reply envelope."""
        return await self.call(node.address, name, [self.sender_id, body])

    async def ping(self, node: DhtNode) -> bytes:
        """A stock-format ping: `["ping", [sender_id]]`, answered with the bare node id."""
        return await self.call(node.address, "ping", [self.sender_id])


@asynccontextmanager
async def raw_peer(host: str = LOCALHOST) -> AsyncIterator[RawPeer]:
    _, peer = await asyncio.get_running_loop().create_datagram_endpoint(RawPeer, local_addr=(host, 0))
    try:
        yield peer
    finally:
        assert peer.transport is not None
        peer.transport.close()


@pytest.fixture
async def mesh(make_mesh: Callable[..., Any]) -> list[DhtNode]:
    return await make_mesh(3)


@pytest.fixture
async def peer() -> AsyncIterator[RawPeer]:
    async with raw_peer() as opened:
        yield opened


async def prove(peer: RawPeer, node: DhtNode) -> Identity:
    """Make `peer` prove an identity from its address to `node`, as a real peer does: it answers the
    challenge its first request causes. Stores and big requests are taken from proven peers only."""
    identity = Identity.generate()
    peer.sender_id = identity.node_id
    peer.answer = hello_answer(identity, lambda nonce: [identity.public_key, identity.sign(proof_message(nonce))])
    await peer.mesh_call(node, "dm_hello", {})
    await eventually(lambda: node.admission.is_proven(peer.address, identity.node_id))
    return identity


# ---- helpers ----------------------------------------------------------------------------------------------


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def frame(kind: int, message_id: bytes, body: Any) -> bytes:
    """An rpcudp datagram: type byte, 20-byte message id, msgpack body."""
    return bytes((kind,)) + message_id + packb(body)


def request_frame(body: Any) -> bytes:
    return frame(REQUEST, os.urandom(20), body)


def raw_request_frame(msgpack_bytes: bytes) -> bytes:
    return bytes((REQUEST,)) + os.urandom(20) + msgpack_bytes


async def send_then_ping(peer: RawPeer, node: DhtNode, datagram: bytes) -> bytes:
    """Send `datagram`, then a ping; when the ping's reply is back the datagram has been handled.
    Returns the datagram's message id (bytes 1-20), to look up a reply to it in `peer.replies`."""
    peer.send(datagram, node.address)
    assert await peer.ping(node) == node.node_id
    return datagram[1:HEADER_SIZE]


def counter_delta(node: DhtNode, before: dict[str, int], name: str) -> int:
    return node.counters.get(name) - before.get(name, 0)


def assert_no_handler_errors(nodes: list[DhtNode]) -> None:
    for node in nodes:
        assert node.counters.get("handler_errors") == 0, f"a handler crashed: {node.counters.snapshot()}"


def handler_errors(nodes: list[DhtNode]) -> int:
    return sum(node.counters.get("handler_errors") for node in nodes)


def is_refusal(envelope: Any) -> bool:
    """An `{"err": ...}` envelope, or one wrapped in `{"ok": ...}` as `dm_done` returns the inner reply."""
    if not isinstance(envelope, dict):
        return False
    return "err" in envelope or (isinstance(envelope.get("ok"), dict) and "err" in envelope["ok"])


async def assert_mesh_still_serves(nodes: list[DhtNode], peer: RawPeer) -> None:
    """Every node answers a stock ping; a put from one node reaches all others and is read back; no crash.
    Meanwhile the peer, which the nodes may have admitted, refuses what they ask it at once: silent, it
    would make each lookup wait out its timeouts, which is not what is checked here."""
    for node in nodes:
        assert await peer.ping(node) == node.node_id
    key, data = os.urandom(20), os.urandom(48)
    answer, peer.answer = peer.answer, lambda message_id, request: {"err": "not serving"}
    try:
        result = await nodes[1].put(key, Value(new_value_id(), data))
        assert result.replicas == len(nodes) - 1
        assert [value.data for value in await nodes[0].get(key)] == [data]
    finally:
        peer.answer = answer
    assert_no_handler_errors(nodes)


def pieces_of(payload: bytes) -> list[bytes]:
    """`payload` cut as the endpoint cuts it; a transfer needs at least 2 pieces."""
    pieces = [payload[offset : offset + PIECE_SIZE] for offset in range(0, len(payload), PIECE_SIZE)]
    if len(pieces) < 2:
        middle = len(payload) // 2
        pieces = [payload[:middle], payload[middle:]]
    return pieces


async def send_as_transfer(peer: RawPeer, node: DhtNode, payload: bytes) -> Any:
    """Upload `payload` with `dm_part` pieces, then `dm_done`; returns the `dm_done` reply envelope."""
    transfer_id = os.urandom(8)
    pieces = pieces_of(payload)
    for index, piece in enumerate(pieces):
        body = {"x": transfer_id, "i": index, "c": len(pieces), "d": piece}
        assert await peer.mesh_call(node, "dm_part", body) == {"ok": True}
    return await peer.mesh_call(node, "dm_done", {"x": transfer_id})


KEY = hashlib.sha1(b"hostile-wire").digest()
OTHER_KEY = hashlib.sha1(b"hostile-wire-other").digest()
SOME_ID = hashlib.sha1(b"some sender").digest()

# ---- datagrams that are not rpcudp frames at all ----------------------------------------------------------

UNDECODABLE = {
    "one byte": b"\x00",
    "header only (21 bytes)": b"\x00" + os.urandom(20),
    "unknown type byte 0x02": bytes((2,)) + os.urandom(20) + packb(["ping", [SOME_ID]]),
    "unknown type byte 0xff": bytes((0xFF,)) + os.urandom(20) + packb(["ping", [SOME_ID]]),
    "reserved msgpack byte 0xc1": raw_request_frame(b"\xc1"),
    "truncated msgpack": raw_request_frame(packb(["store", [SOME_ID, KEY, b"x" * 100]])[:-10]),
    "60,000-deep nested arrays": raw_request_frame(b"\x91" * 60000 + b"\xc0"),
    "bin32 claiming 4 GiB": raw_request_frame(b"\x92\xa4ping\x91\xc6\xff\xff\xff\xff" + b"x" * 16),
    "str32 claiming 2 GiB": raw_request_frame(b"\x92\xdb\x7f\xff\xff\xff" + b"ping"),
    "array32 claiming 4 billion items": raw_request_frame(b"\xdd\xff\xff\xff\xff\xc0"),
    "map32 claiming 4 billion pairs": raw_request_frame(b"\xdf\xff\xff\xff\xff\xc0\xc0"),
    "map with an integer key": request_frame({1: "ping"}),
    "map with a nil key, nested in args": request_frame(["ping", [{None: SOME_ID}]]),
    "map with an array key": raw_request_frame(b"\x92\xa4ping\x91\x81\x91\x01\x02"),
    "fixext1 ext type": raw_request_frame(b"\x92\xa4ping\x91\xd4\x05\x00"),
    "timestamp ext type (-1)": raw_request_frame(b"\x92\xa4ping\x91\xd6\xff\x00\x00\x00\x01"),
    "ext32 claiming 4 GiB": raw_request_frame(b"\xc9\xff\xff\xff\xff\x05"),
    "invalid UTF-8 in the name": raw_request_frame(b"\x92\xa4p\xffng\x91\xc4\x14" + SOME_ID),
    "trailing bytes after the message": raw_request_frame(packb(["ping", [SOME_ID]]) + b"\x00"),
}


@pytest.mark.parametrize("datagram", UNDECODABLE.values(), ids=UNDECODABLE.keys())
async def test_undecodable_datagram_is_counted_and_dropped(mesh: list[DhtNode], peer: RawPeer, datagram: bytes) -> None:
    node = mesh[0]
    before = node.counters.snapshot()
    message_id = await send_then_ping(peer, node, datagram)
    # Over an Ethernet frame's payload a datagram is not even decoded: it is counted apart.
    counter = "oversized_datagrams" if len(datagram) > 1472 else "malformed_datagrams"
    assert counter_delta(node, before, counter) == 1
    assert message_id not in peer.replies
    assert counter_delta(node, before, "rpc_in.unknown") == 0
    await assert_mesh_still_serves(mesh, peer)


# ---- decodable requests of the wrong shape ----------------------------------------------------------------

ZERO_LENGTH_EXT = msgpack.ExtType(5, b"")  # the only ext the decoder lets through (max_ext_len=0)
MISSHAPEN_REQUESTS: dict[str, Any] = {
    "a bare string": "ping",
    "nil": None,
    "an empty list": [],
    "name only": ["ping"],
    "three elements": ["ping", [SOME_ID], "extra"],
    "integer name": [7, [SOME_ID]],
    "binary name": [b"ping", [SOME_ID]],
    "a map": {"ping": [SOME_ID]},
    "a zero-length ext": ZERO_LENGTH_EXT,
    "args are binary": ["ping", SOME_ID],
    "args are a map": ["ping", {"id": SOME_ID}],
    "args are nil": ["ping", None],
    "args are an ext": ["ping", ZERO_LENGTH_EXT],
    "dm args are a map": ["dm_find", {"t": KEY}],
}


@pytest.mark.parametrize("body", MISSHAPEN_REQUESTS.values(), ids=MISSHAPEN_REQUESTS.keys())
async def test_request_that_is_not_name_and_args_list_is_ignored(mesh: list[DhtNode], peer: RawPeer, body: Any) -> None:
    node = mesh[0]
    before = node.counters.snapshot()
    message_id = await send_then_ping(peer, node, request_frame(body))
    assert counter_delta(node, before, "malformed_requests") == 1
    assert message_id not in peer.replies
    await assert_mesh_still_serves(mesh, peer)


UNKNOWN_NAMES = ["rpc_ping", "__init__", "_serve_plain", "transport", "PING", "", "dm_unknown", "dm_ping", "ping\x00"]


@pytest.mark.parametrize("name", UNKNOWN_NAMES)
async def test_unknown_rpc_name_gets_no_answer(mesh: list[DhtNode], peer: RawPeer, name: str) -> None:
    node = mesh[0]
    before = node.counters.snapshot()
    message_id = await send_then_ping(peer, node, request_frame([name, [SOME_ID, {"t": KEY}]]))
    assert counter_delta(node, before, "rpc_in.unknown") == 1
    assert message_id not in peer.replies
    await assert_mesh_still_serves(mesh, peer)


async def test_every_rpc_name_the_fuzzer_uses_is_served(mesh: list[DhtNode], peer: RawPeer) -> None:
    """The fuzz tests below pick names from ALL_RPCS: check each is a real, routed RPC (not 'unknown')."""
    node = mesh[0]
    before = node.counters.snapshot()
    for name in ALL_RPCS:
        peer.send(request_frame([name, [SOME_ID, {}]]), node.address)
    assert await peer.ping(node) == node.node_id
    routed = {name: counter_delta(node, before, f"rpc_in.{name}") for name in ALL_RPCS}
    assert routed == {name: 2 if name == "ping" else 1 for name in ALL_RPCS}
    assert counter_delta(node, before, "rpc_in.unknown") == 0
    assert_no_handler_errors(mesh)


# ---- stock RPCs with wrong arguments: refused, and (as rpcudp does) not answered ---------------------------

BAD_STOCK_CALLS: dict[str, list] = {
    "ping without sender id": ["ping", []],
    "ping with a 5-byte sender id": ["ping", [b"short"]],
    "ping with an integer sender id": ["ping", [12345]],
    "ping with two arguments": ["ping", [SOME_ID, SOME_ID]],
    "store with a 64-byte key": ["store", [SOME_ID, b"k" * 64, b"value"]],
    "store with a string key": ["store", [SOME_ID, "k" * 20, b"value"]],
    "store with a list value": ["store", [SOME_ID, KEY, [1, 2, 3]]],
    "store with a map value": ["store", [SOME_ID, KEY, {"a": 1}]],
    "store with a nil value": ["store", [SOME_ID, KEY, None]],
    "store with an ext value": ["store", [SOME_ID, KEY, ZERO_LENGTH_EXT]],
    "store without value": ["store", [SOME_ID, KEY]],
    "find_node with an integer key": ["find_node", [SOME_ID, 12345]],
    "find_node with a 21-byte key": ["find_node", [SOME_ID, b"k" * 21]],
    "find_node without key": ["find_node", [SOME_ID]],
    "find_value with a nil key": ["find_value", [SOME_ID, None]],
    "find_value with a list key": ["find_value", [SOME_ID, [KEY]]],
}


@pytest.mark.parametrize("body", BAD_STOCK_CALLS.values(), ids=BAD_STOCK_CALLS.keys())
async def test_stock_rpc_with_wrong_arguments_is_refused(mesh: list[DhtNode], peer: RawPeer, body: list) -> None:
    node = mesh[0]
    before = node.counters.snapshot()
    stored_before = node.store.counts()["storage_values"]
    message_id = await send_then_ping(peer, node, request_frame(body))
    assert counter_delta(node, before, "refused_requests") == 1
    assert message_id not in peer.replies
    assert node.store.counts()["storage_values"] == stored_before
    await assert_mesh_still_serves(mesh, peer)


# ---- dhtmesh RPCs: a malformed envelope, or bad fields, get an {"err": ...} reply ---------------------------

MALFORMED_MESH_CALLS: dict[str, list] = {
    "19-byte sender id": ["dm_find", [b"x" * 19, {"t": KEY}]],
    "21-byte sender id": ["dm_find", [b"x" * 21, {"t": KEY}]],
    "string sender id": ["dm_find", ["x" * 20, {"t": KEY}]],
    "body is a list": ["dm_find", [SOME_ID, ["t", KEY]]],
    "body is nil": ["dm_store", [SOME_ID, None]],
    "body is a string": ["dm_store", [SOME_ID, "k"]],
    "body missing": ["dm_versions", [SOME_ID]],
    "extra argument": ["dm_hello", [SOME_ID, {}, {}]],
    "transfer rpc with a short sender id": ["dm_part", [b"x", {"x": b"12345678", "i": 0, "c": 2, "d": b""}]],
}


@pytest.mark.parametrize("body", MALFORMED_MESH_CALLS.values(), ids=MALFORMED_MESH_CALLS.keys())
async def test_mesh_rpc_with_malformed_envelope_gets_an_error(mesh: list[DhtNode], peer: RawPeer, body: list) -> None:
    node = mesh[0]
    before = node.counters.snapshot()
    reply = await peer.call(node.address, *body)
    assert isinstance(reply, dict) and str(reply.get("err", "")).startswith("malformed request")
    assert counter_delta(node, before, "malformed_requests") == 1
    await assert_mesh_still_serves(mesh, peer)


def unsigned_wire(data: bytes = b"data", **fields: Any) -> list:
    wire = Value(new_value_id(), data).to_wire()
    positions = {"id": 0, "type": 1, "data": 2, "owner": 3, "seq": 4, "sig": 5, "utype": 6}
    for name, content in fields.items():
        wire[positions[name]] = content
    return wire


def tampered_signed_wire() -> list:
    value = sign_value(Identity.generate(), KEY, Value(new_value_id(), b"genuine", seq=1))
    wire = value.to_wire()
    wire[2] = b"tampered"
    return wire


BAD_MESH_FIELDS: dict[str, tuple[str, dict]] = {
    "find: 5-byte target": ("dm_find", {"t": b"short"}),
    "find: integer target": ("dm_find", {"t": 5}),
    "find: no target": ("dm_find", {}),
    "find: negative page": ("dm_find", {"t": KEY, "v": True, "p": -1}),
    "find: boolean page": ("dm_find", {"t": KEY, "v": True, "p": True}),
    "find: page beyond 2^32": ("dm_find", {"t": KEY, "v": True, "p": 1 << 40}),
    "find: value id filter is a string": ("dm_find", {"t": KEY, "v": True, "w": "7"}),
    "find: value id filter 0": ("dm_find", {"t": KEY, "v": True, "w": 0}),
    "find: negative value id filter": ("dm_find", {"t": KEY, "v": True, "w": -1}),
    "find: value type filter is a string": ("dm_find", {"t": KEY, "v": True, "y": "3"}),
    "find: value type filter above 16 bits": ("dm_find", {"t": KEY, "v": True, "y": 1 << 16}),
    "find: negative value type filter": ("dm_find", {"t": KEY, "v": True, "y": -1}),
    "find carrying a put: value is a string": ("dm_find", {"t": KEY, "s": "value", "ttl": 10}),
    "find carrying a put: bad signature": ("dm_find", {"t": KEY, "s": tampered_signed_wire(), "ttl": 10}),
    "find carrying a put: no ttl": ("dm_find", {"t": KEY, "s": unsigned_wire()}),
    "find carrying a put: NaN ttl": ("dm_find", {"t": KEY, "s": unsigned_wire(), "ttl": math.nan}),
    "store: 64-byte key": ("dm_store", {"k": b"k" * 64, "v": unsigned_wire(), "ttl": 10}),
    "store: value is a string": ("dm_store", {"k": KEY, "v": "value", "ttl": 10}),
    "store: value has 3 fields": ("dm_store", {"k": KEY, "v": [1, 0, b"x"], "ttl": 10}),
    "store: value id 0": ("dm_store", {"k": KEY, "v": unsigned_wire(id=0), "ttl": 10}),
    "store: negative value id": ("dm_store", {"k": KEY, "v": unsigned_wire(id=-5), "ttl": 10}),
    "store: type above 16 bits": ("dm_store", {"k": KEY, "v": unsigned_wire(type=1 << 20), "ttl": 10}),
    "store: boolean seq": ("dm_store", {"k": KEY, "v": unsigned_wire(seq=True), "ttl": 10}),
    "store: string data": ("dm_store", {"k": KEY, "v": unsigned_wire(data="text"), "ttl": 10}),
    "store: unsigned value with a signature": ("dm_store", {"k": KEY, "v": unsigned_wire(sig=b"s" * 64), "ttl": 10}),
    "store: 31-byte owner": ("dm_store", {"k": KEY, "v": unsigned_wire(owner=b"o" * 31, seq=1), "ttl": 10}),
    "store: owner that is not a curve point, zero signature": (
        "dm_store",
        {"k": KEY, "v": unsigned_wire(owner=b"\xff" * 32, sig=b"\x00" * 64, seq=1), "ttl": 10},
    ),
    "store: bad signature (tampered data)": ("dm_store", {"k": KEY, "v": tampered_signed_wire(), "ttl": 10}),
    "store: negative ttl": ("dm_store", {"k": KEY, "v": unsigned_wire(), "ttl": -1}),
    "store: NaN ttl": ("dm_store", {"k": KEY, "v": unsigned_wire(), "ttl": math.nan}),
    "store: infinite ttl": ("dm_store", {"k": KEY, "v": unsigned_wire(), "ttl": math.inf}),
    "store: ttl longer than the type allows": ("dm_store", {"k": KEY, "v": unsigned_wire(), "ttl": 10**9}),
    "store: string ttl": ("dm_store", {"k": KEY, "v": unsigned_wire(), "ttl": "10"}),
    "store: 19-byte storer named": ("dm_store", {"k": KEY, "v": unsigned_wire(), "ttl": 10, "by": b"b" * 19}),
    "store: storer named as a string": ("dm_store", {"k": KEY, "v": unsigned_wire(), "ttl": 10, "by": "b" * 20}),
    "fetch: integer owner": ("dm_fetch", {"k": KEY, "o": 5, "i": 1}),
    "fetch: value id 0": ("dm_fetch", {"k": KEY, "o": b"", "i": 0}),
    "sub: unproven subscriber": ("dm_sub", {"k": KEY, "ttl": 10}),
    "sub: zero ttl": ("dm_sub", {"k": KEY, "ttl": 0}),
    "unsub: nil key": ("dm_unsub", {"k": None}),
    "notify: 19-byte key": ("dm_notify", {"k": KEY[:19], "v": tampered_signed_wire()}),
    "versions: list key": ("dm_versions", {"k": [KEY]}),
}


@pytest.mark.parametrize("call", BAD_MESH_FIELDS.values(), ids=BAD_MESH_FIELDS.keys())
async def test_mesh_rpc_with_bad_fields_is_refused(mesh: list[DhtNode], peer: RawPeer, call: tuple[str, dict]) -> None:
    node = mesh[0]
    name, body = call
    if name == "dm_store" or "s" in body:
        await prove(peer, node)  # only a proven peer's values are looked at
    before = node.counters.snapshot()
    stored_before = node.store.counts()["storage_values"]
    reply = await peer.mesh_call(node, name, body)
    assert isinstance(reply, dict) and isinstance(reply.get("err"), str) and "ok" not in reply
    assert counter_delta(node, before, "refused_requests") == 1
    assert node.store.counts()["storage_values"] == stored_before
    await assert_mesh_still_serves(mesh, peer)


async def test_bad_signature_reply_names_the_signature(mesh: list[DhtNode], peer: RawPeer) -> None:
    await prove(peer, mesh[0])
    reply = await peer.mesh_call(mesh[0], "dm_store", {"k": KEY, "v": tampered_signed_wire(), "ttl": 10})
    assert reply == {"err": "invalid value: bad signature"}
    assert mesh[0].store.get(KEY) == []


# ---- signed values: replays ---------------------------------------------------------------------------------


async def test_replayed_signed_value_with_lower_seq_is_refused(mesh: list[DhtNode], peer: RawPeer) -> None:
    await prove(peer, mesh[0])
    node = mesh[0]
    owner = Identity.generate()
    value_id = new_value_id()
    newer = sign_value(owner, KEY, Value(value_id, b"version 2", seq=2))
    older = sign_value(owner, KEY, Value(value_id, b"version 1", seq=1))

    stored = await peer.mesh_call(node, "dm_store", {"k": KEY, "v": newer.to_wire(), "ttl": 60})
    assert stored == {"ok": {"stored": True, "why": Verdict.NEW.value}}
    before = node.counters.snapshot()
    replay = await peer.mesh_call(node, "dm_store", {"k": KEY, "v": older.to_wire(), "ttl": 60})

    assert replay == {"ok": {"stored": False, "why": Verdict.REFUSE_STALE.value}}
    assert counter_delta(node, before, "stores_refused") == 1
    held = node.store.get_one(KEY, owner.public_key, value_id)
    assert held is not None and (held.seq, held.data) == (2, b"version 2")
    # Another node, reading through the mesh, sees the newer version only.
    assert [(v.seq, v.data) for v in await mesh[2].get(KEY)] == [(2, b"version 2")]
    await assert_mesh_still_serves(mesh, peer)


async def test_signed_value_replayed_under_another_key_is_refused(mesh: list[DhtNode], peer: RawPeer) -> None:
    await prove(peer, mesh[0])
    node = mesh[0]
    owner = Identity.generate()
    value = sign_value(owner, KEY, Value(new_value_id(), b"meant for KEY", seq=3))
    assert await peer.mesh_call(node, "dm_store", {"k": KEY, "v": value.to_wire(), "ttl": 60}) == {
        "ok": {"stored": True, "why": Verdict.NEW.value}
    }
    before = node.counters.snapshot()
    replay = await peer.mesh_call(node, "dm_store", {"k": OTHER_KEY, "v": value.to_wire(), "ttl": 60})
    assert replay == {"err": "invalid value: bad signature"}
    assert counter_delta(node, before, "refused_requests") == 1
    assert node.store.get(OTHER_KEY) == []
    assert await mesh[1].get(OTHER_KEY) == []
    await assert_mesh_still_serves(mesh, peer)


# ---- the piece-transfer RPCs ----------------------------------------------------------------------------

GOOD_PIECE: dict[str, Any] = {"x": b"transfer", "i": 0, "c": 2, "d": b"piece"}
BAD_PIECES: dict[str, dict] = {
    "negative index": {"i": -1},
    "index equal to count": {"i": 2},
    "index far beyond count": {"i": 1 << 40},
    "string index": {"i": "0"},
    "count of 1": {"c": 1},
    "count of 0": {"c": 0},
    "count above MAX_PIECES": {"c": MAX_PIECES + 1},
    "count of 2^40": {"c": 1 << 40, "i": 5},
    "oversized piece": {"d": b"p" * (PIECE_SIZE + 1)},
    "string piece": {"d": "piece"},
    "7-byte transfer id": {"x": b"7 bytes"},
    "integer transfer id": {"x": 12345678},
    "no transfer id": {"x": None},
}


@pytest.mark.parametrize("changes", BAD_PIECES.values(), ids=BAD_PIECES.keys())
async def test_malformed_piece_is_refused(mesh: list[DhtNode], peer: RawPeer, changes: dict) -> None:
    await prove(peer, mesh[0])
    node = mesh[0]
    body = {name: content for name, content in (GOOD_PIECE | changes).items() if content is not None}
    before = node.counters.snapshot()
    assert await peer.mesh_call(node, "dm_part", body) == {"err": "malformed piece"}
    assert counter_delta(node, before, "refused_requests") == 1
    await assert_mesh_still_serves(mesh, peer)


async def test_piece_count_cannot_change_within_a_transfer(mesh: list[DhtNode], peer: RawPeer) -> None:
    await prove(peer, mesh[0])
    node = mesh[0]
    assert await peer.mesh_call(node, "dm_part", GOOD_PIECE) == {"ok": True}
    changed = GOOD_PIECE | {"i": 1, "c": 3}
    assert await peer.mesh_call(node, "dm_part", changed) == {"err": "piece count changed"}
    await assert_mesh_still_serves(mesh, peer)


async def test_pending_pieces_per_peer_are_bounded(mesh: list[DhtNode], peer: RawPeer) -> None:
    """Each transfer announcing MAX_PIECES reserves that much; a peer cannot reserve more than its share."""
    await prove(peer, mesh[0])
    node = mesh[0]
    allowed = MAX_PENDING_BYTES_PER_PEER // (MAX_PIECES * PIECE_SIZE)
    for _ in range(allowed):
        body = {"x": os.urandom(8), "i": 0, "c": MAX_PIECES, "d": b"p" * PIECE_SIZE}
        assert await peer.mesh_call(node, "dm_part", body) == {"ok": True}
    body = {"x": os.urandom(8), "i": 0, "c": MAX_PIECES, "d": b"p" * PIECE_SIZE}
    assert await peer.mesh_call(node, "dm_part", body) == {"err": "too many transfers in progress"}
    async with raw_peer() as same_host:  # another port of the same host shares that host's share
        await prove(same_host, node)
        assert await same_host.mesh_call(node, "dm_part", body) == {"err": "too many transfers in progress"}
    async with raw_peer(loopback_host()) as other:  # another host still has its own share
        await prove(other, node)
        assert await other.mesh_call(node, "dm_part", body) == {"ok": True}
    await assert_mesh_still_serves(mesh, peer)


@pytest.mark.parametrize(
    "body",
    [{"x": b"nosuchid"}, {"x": 5}, {"x": [b"nosuchid"]}, {}],
    ids=["unknown id", "integer id", "list id", "no id"],
)
async def test_done_for_unknown_transfer_is_refused(mesh: list[DhtNode], peer: RawPeer, body: dict) -> None:
    node = mesh[0]
    before = node.counters.snapshot()
    assert await peer.mesh_call(node, "dm_done", body) == {"err": "incomplete transfer"}
    assert counter_delta(node, before, "refused_requests") == 1
    await assert_mesh_still_serves(mesh, peer)


async def test_done_for_incomplete_transfer_is_refused(mesh: list[DhtNode], peer: RawPeer) -> None:
    await prove(peer, mesh[0])
    node = mesh[0]
    assert await peer.mesh_call(node, "dm_part", GOOD_PIECE) == {"ok": True}
    assert await peer.mesh_call(node, "dm_done", {"x": GOOD_PIECE["x"]}) == {"err": "incomplete transfer"}
    await assert_mesh_still_serves(mesh, peer)


async def test_transfer_is_bound_to_the_sender_address(mesh: list[DhtNode], peer: RawPeer) -> None:
    """Pieces sent from one address cannot be completed (hijacked) from another."""
    await prove(peer, mesh[0])
    node = mesh[0]
    payload = packb(["dm_versions", [peer.sender_id, {"k": KEY}]])
    transfer_id = os.urandom(8)
    for index, piece in enumerate(pieces_of(payload)):
        body = {"x": transfer_id, "i": index, "c": 2, "d": piece}
        assert await peer.mesh_call(node, "dm_part", body) == {"ok": True}
    async with raw_peer() as thief:
        assert await thief.mesh_call(node, "dm_done", {"x": transfer_id}) == {"err": "incomplete transfer"}
    assert await peer.mesh_call(node, "dm_done", {"x": transfer_id}) == {"ok": {"ok": []}}
    await assert_mesh_still_serves(mesh, peer)


async def test_big_request_in_pieces_is_served(mesh: list[DhtNode], peer: RawPeer) -> None:
    """Positive control for the transfer tests: a well-formed 3 KB dm_store in pieces is stored."""
    await prove(peer, mesh[0])
    node = mesh[0]
    value = Value(new_value_id(), os.urandom(3000))
    payload = packb(["dm_store", [peer.sender_id, {"k": KEY, "v": value.to_wire(), "ttl": 60}]])
    assert await send_as_transfer(peer, node, payload) == {"ok": {"ok": {"stored": True, "why": "new"}}}
    assert node.store.get(KEY) == [value]
    await assert_mesh_still_serves(mesh, peer)


TRANSFER_PAYLOADS: dict[str, bytes] = {
    "not msgpack": b"\xc1\xc1\xc1",
    "truncated msgpack": packb(["dm_versions", [SOME_ID, {"k": KEY}]])[:-3],
    "a map": packb({"dm_find": [SOME_ID, {"t": KEY}]}),
    "a stock rpc": packb(["ping", [SOME_ID]]),
    "an unknown name": packb(["dm_nothing", [SOME_ID, {}]]),
    "a nested dm_part": packb(["dm_part", [SOME_ID, GOOD_PIECE]]),
    "a nested dm_done": packb(["dm_done", [SOME_ID, {"x": b"transfer"}]]),
    "a refused inner request": packb(["dm_find", [SOME_ID, {"t": b"short"}]]),
    "inner sender id too short": packb(["dm_find", [b"short", {"t": KEY}]]),
    "inner args are a string": packb(["dm_find", "ab"]),
    # The next four reach code that assumes a hashable name or list args (see endpoint._serve_done).
    "name is a list": packb([["dm_find"], [SOME_ID, {"t": KEY}]]),
    "name is a map": packb([{"n": "dm_find"}, [SOME_ID, {"t": KEY}]]),
    "inner args are an integer": packb(["dm_find", 5]),
    "inner args are a 2-entry map": packb(["dm_find", {"a": SOME_ID, "b": {"t": KEY}}]),
    "inner args are nil": packb(["dm_find", None]),
}


@pytest.mark.parametrize("payload", TRANSFER_PAYLOADS.values(), ids=TRANSFER_PAYLOADS.keys())
async def test_transfer_holding_no_valid_request_is_refused(mesh: list[DhtNode], peer: RawPeer, payload: bytes) -> None:
    await prove(peer, mesh[0])
    node = mesh[0]
    reply = await send_as_transfer(peer, node, payload)
    assert is_refusal(reply), reply
    assert reply != {"err": "internal error"}, "dm_done crashed on the reassembled request"
    assert_no_handler_errors(mesh)
    await assert_mesh_still_serves(mesh, peer)


async def test_pull_of_unknown_transfer_is_refused(mesh: list[DhtNode], peer: RawPeer) -> None:
    node = mesh[0]
    before = node.counters.snapshot()
    for body in ({"x": os.urandom(8), "i": 0}, {"x": 5, "i": 0}, {"x": [b"x"], "i": 0}, {}):
        assert await peer.mesh_call(node, "dm_pull", body) == {"err": "unknown transfer"}
    assert counter_delta(node, before, "refused_requests") == 4
    await assert_mesh_still_serves(mesh, peer)


async def test_big_reply_can_only_be_pulled_by_its_asker(mesh: list[DhtNode], peer: RawPeer) -> None:
    await prove(peer, mesh[0])
    node = mesh[0]
    value = Value(new_value_id(), os.urandom(3000))
    await mesh[1].put(KEY, value)
    assert node.store.get(KEY) == [value]

    handle = await peer.mesh_call(node, "dm_fetch", {"k": KEY, "o": b"", "i": value.id})
    assert set(handle) == {"big"}
    transfer_id, count = handle["big"]
    async with raw_peer() as stranger:
        assert await stranger.mesh_call(node, "dm_pull", {"x": transfer_id, "i": 0}) == {"err": "unknown transfer"}
    for bad_index in (count, -1, "0"):
        assert is_refusal(await peer.mesh_call(node, "dm_pull", {"x": transfer_id, "i": bad_index}))
    pieces = [await peer.mesh_call(node, "dm_pull", {"x": transfer_id, "i": index}) for index in range(count)]
    envelope = msgpack.unpackb(b"".join(piece["ok"] for piece in pieces), raw=False)
    assert envelope == {"ok": value.to_wire()}
    await assert_mesh_still_serves(mesh, peer)


# ---- responses nobody asked for -------------------------------------------------------------------------


async def test_responses_with_unknown_message_ids_are_ignored(mesh: list[DhtNode], peer: RawPeer) -> None:
    node = mesh[0]
    before = node.counters.snapshot()
    bodies: list[Any] = [node.node_id, {"ok": {"stored": True}}, None, [[SOME_ID, LOCALHOST, 1]] * 20]
    for body in bodies:
        peer.send(frame(RESPONSE, os.urandom(20), body), node.address)
    peer.send(bytes((RESPONSE,)) + os.urandom(20) + b"\xc1", node.address)  # not even msgpack
    assert await peer.ping(node) == node.node_id
    # Dropped by their message id before any decoding: none is counted as malformed.
    assert counter_delta(node, before, "unexpected_responses") == len(bodies) + 1
    assert counter_delta(node, before, "malformed_datagrams") == 0
    await assert_mesh_still_serves(mesh, peer)


async def test_reply_from_an_address_that_was_not_asked_is_ignored(mesh: list[DhtNode], peer: RawPeer) -> None:
    """The node challenges a new sender; a forged answer from another address must not prove anything."""
    node = mesh[0]
    claimer = Identity.generate()
    peer.sender_id = claimer.node_id
    await peer.mesh_call(node, "dm_find", {"t": KEY})  # an unproven sender: the node challenges it
    await eventually(lambda: bool(peer.requests))
    message_id, challenge = peer.requests[0]
    assert challenge[0] == "dm_hello"
    nonce = challenge[1][1]["n"]
    forged = {"ok": {"id": claimer.node_id}, "pf": [claimer.public_key, claimer.sign(proof_message(nonce))]}
    before = node.counters.snapshot()
    async with raw_peer() as forger:
        forger.send(frame(RESPONSE, message_id, forged), node.address)
        assert await forger.ping(node) == node.node_id
    assert counter_delta(node, before, "unexpected_responses") == 1
    assert claimer.node_id not in node.table
    await assert_mesh_still_serves(mesh, peer)


def hello_answer(identity: Identity, proof: Callable[[bytes], Any]) -> Callable[[bytes, Any], Any]:
    """An answer to the node's `dm_hello` challenge whose proof is `proof(nonce)`."""

    def answer(message_id: bytes, request: Any) -> Any:
        nonce = request[1][1]["n"]
        return {"ok": {"id": identity.node_id, "you": ["127.0.0.1", 1]}, "pf": proof(nonce)}

    return answer


def make_bad_answers(identity: Identity) -> dict[str, Callable[[bytes, Any], Any]]:
    impostor = Identity.generate()
    return {
        "not an envelope": lambda message_id, request: b"garbage",
        "envelope without ok or err": lambda message_id, request: {"what": 1},
        "proof is a string": hello_answer(identity, lambda nonce: "proof"),
        "proof has one element": hello_answer(identity, lambda nonce: [identity.public_key]),
        "proof by another key": hello_answer(
            identity, lambda nonce: [impostor.public_key, impostor.sign(proof_message(nonce))]
        ),
        "signature of another nonce": hello_answer(
            identity, lambda nonce: [identity.public_key, identity.sign(proof_message(os.urandom(16)))]
        ),
        "signature without the proof domain": hello_answer(
            identity, lambda nonce: [identity.public_key, identity.sign(nonce)]
        ),
    }


BAD_ANSWER_NAMES = list(make_bad_answers(Identity.generate()))


@pytest.mark.parametrize("answer_name", BAD_ANSWER_NAMES)
async def test_bad_answer_to_a_challenge_does_not_admit_the_sender(
    mesh: list[DhtNode], peer: RawPeer, answer_name: str
) -> None:
    node = mesh[0]
    identity = Identity.generate()
    peer.sender_id = identity.node_id
    peer.answer = make_bad_answers(identity)[answer_name]
    before = node.counters.snapshot()
    await peer.mesh_call(node, "dm_find", {"t": KEY})
    await eventually(lambda: counter_delta(node, before, "challenges_failed") == 1)
    assert identity.node_id not in node.table
    assert not node.admission.is_proven(peer.address, identity.node_id)
    await assert_mesh_still_serves(mesh, peer)


async def test_good_answer_to_a_challenge_admits_the_sender(mesh: list[DhtNode], peer: RawPeer) -> None:
    """Positive control for the test above: the same peer with a correct proof enters the routing table."""
    node = mesh[0]
    identity = Identity.generate()
    peer.sender_id = identity.node_id
    peer.answer = hello_answer(identity, lambda nonce: [identity.public_key, identity.sign(proof_message(nonce))])
    await peer.mesh_call(node, "dm_find", {"t": KEY})
    await eventually(lambda: identity.node_id in node.table)
    assert node.admission.is_proven(peer.address, identity.node_id)
    assert_no_handler_errors(mesh)


# ---- fuzzing ------------------------------------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(),
    st.text(max_size=24),
    st.binary(max_size=48),
    st.binary(min_size=20, max_size=20),  # looks like a key or node id
    st.binary(min_size=8, max_size=8),  # looks like a transfer id
    st.sampled_from(ALL_RPCS),
)
map_keys = st.one_of(st.sampled_from(BODY_FIELDS), st.text(max_size=6), st.binary(max_size=6))
structures = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=7), st.dictionaries(map_keys, children, max_size=7)),
    max_leaves=30,
)
mesh_bodies = st.dictionaries(st.sampled_from(BODY_FIELDS), structures, max_size=len(BODY_FIELDS))
rpc_args = st.one_of(
    st.lists(structures, max_size=5),
    st.tuples(st.one_of(st.binary(min_size=20, max_size=20), structures), mesh_bodies).map(list),
    structures,
)
request_bodies = st.tuples(st.sampled_from(ALL_RPCS), rpc_args).map(list)


@FUZZ_SETTINGS
@given(data=st.binary(min_size=1, max_size=2048), framed=st.sampled_from([None, 0, 1, 2, 0xFF]))
async def test_random_bytes_do_not_disturb_the_node(
    mesh: list[DhtNode], peer: RawPeer, data: bytes, framed: int | None
) -> None:
    node = mesh[0]
    crashes_before = handler_errors(mesh)  # the mesh lives across examples: compare per example
    datagram = data if framed is None else bytes((framed,)) + os.urandom(20) + data
    async with raw_peer() as hostile:
        hostile.send(datagram, node.address)
        assert await peer.ping(node) == node.node_id
    assert handler_errors(mesh) == crashes_before


@FUZZ_SETTINGS
@given(body=request_bodies)
async def test_random_request_frames_do_not_crash_a_handler(mesh: list[DhtNode], peer: RawPeer, body: list) -> None:
    node = mesh[0]
    crashes_before = handler_errors(mesh)
    async with raw_peer() as hostile:
        hostile.send(request_frame(body), node.address)
        assert await peer.ping(node) == node.node_id
    assert handler_errors(mesh) == crashes_before


@FUZZ_SETTINGS
@given(body=st.one_of(request_bodies, structures))
async def test_random_requests_reassembled_from_pieces_do_not_crash_a_handler(
    mesh: list[DhtNode], peer: RawPeer, body: Any
) -> None:
    node = mesh[0]
    crashes_before = handler_errors(mesh)
    if not node.admission.is_proven(peer.address, peer.sender_id):
        await prove(peer, node)  # once: the examples share this peer, as a real one would send many
    reply = await send_as_transfer(peer, node, packb(body))
    assert isinstance(reply, dict) and ("ok" in reply or "err" in reply)
    assert await peer.ping(node) == node.node_id
    assert handler_errors(mesh) == crashes_before, f"dm_done crashed; it answered {reply}"


async def test_burst_of_odd_arguments_to_every_rpc_leaves_the_mesh_serving(mesh: list[DhtNode], peer: RawPeer) -> None:
    """Every RPC name with a spread of argument shapes, back to back, at all three nodes."""
    every_field_a_key = {field: KEY for field in BODY_FIELDS}
    shapes: list[list] = [[], [SOME_ID], [SOME_ID, {}], [SOME_ID, every_field_a_key], [None, None], [SOME_ID] * 3]
    before = [node.counters.snapshot() for node in mesh]
    for node in mesh:
        for name in ALL_RPCS:
            for args in shapes:
                peer.send(request_frame([name, args]), node.address)
    await assert_mesh_still_serves(mesh, peer)
    for node, counts in zip(mesh, before, strict=True):
        handled = sum(counter_delta(node, counts, f"rpc_in.{name}") for name in ALL_RPCS)
        assert handled >= len(ALL_RPCS) * len(shapes)


# ---- datagram size ------------------------------------------------------------------------------------------


async def reader_without_copy(nodes: list[DhtNode], key: bytes) -> DhtNode:
    """A node whose get must travel over the wire. A small put stores along its lookup, so in a tiny
    mesh every node may hold the key: then one forgets its copies (the others keep theirs)."""
    reader = next((node for node in nodes if not node.store.get(key)), nodes[-1])
    if reader.store.get(key):
        reader.store.close()
        reader.store = ValueStore(None, reader.config.quotas)
    return reader


async def test_64_kib_value_travels_in_datagrams_of_at_most_1400_bytes(make_mesh: Callable[..., Any]) -> None:
    nodes = await make_mesh(5, config=FAST_K3)
    with watch_datagrams(nodes) as sent:
        key = hashlib.sha1(b"a big value").digest()
        value = nodes[0].sign(key, Value(new_value_id(), os.urandom(64 * 1024), utype="application/octet-stream"))

        result = await nodes[0].put(key, value)
        reader = await reader_without_copy(nodes, key)
        got = await reader.get(key)

        assert result.replicas >= 1
        assert got == [value]
        assert_no_handler_errors(nodes)
    assert len(sent) > 2 * (64 * 1024 // PIECE_SIZE), "the value did not cross the wire in pieces"
    assert max(len(datagram) for _, datagram in sent) <= MAX_DATAGRAM


async def test_key_with_50_values_is_paged_in_datagrams_of_at_most_1400_bytes(
    make_mesh: Callable[..., Any],
) -> None:
    nodes = await make_mesh(5, config=FAST_K3)
    with watch_datagrams(nodes) as sent:
        key = hashlib.sha1(b"a crowded key").digest()
        # Small values go inline in find pages, larger ones as references fetched one by one.
        values = [Value(new_value_id(), os.urandom(40 if index % 2 else 700)) for index in range(50)]
        for value in values:
            assert (await nodes[0].put(key, value)).replicas >= 1

        reader = await reader_without_copy(nodes, key)
        got = await reader.get(key)

        assert sorted(got, key=lambda v: v.id) == sorted(values, key=lambda v: v.id)
        assert_no_handler_errors(nodes)
    assert max(len(datagram) for _, datagram in sent) <= MAX_DATAGRAM


async def test_request_in_pieces_whose_wrapped_reply_just_overflows_returns_the_bare_payload(
    make_mesh: Callable[..., Any],
) -> None:
    """`dm_done` answers `{"ok": inner_envelope}`, 4 bytes longer than the inner envelope. Where the inner one
    fits a datagram and the wrapped one does not, the asker pulls the wrapped reply and must still get the
    bare payload (the boundary that commit 68e231d fixed in `Endpoint.call`)."""
    nodes = await make_mesh(2)
    key = hashlib.sha1(b"envelope boundary").digest()
    crossed = 0
    for size in range(1340, 1380):
        value = Value(size, os.urandom(size))  # the id is the size: unique under the key, constant width
        await nodes[1].put(key, value)
        inner = HEADER_SIZE + len(packb({"ok": value.to_wire()}))
        wrapped = HEADER_SIZE + len(packb({"ok": {"ok": value.to_wire()}}))
        crossed += inner <= MAX_DATAGRAM < wrapped
        body = {"k": key, "o": b"", "i": value.id, "pad": b"p" * 1500}  # too big for one datagram: sent in pieces
        reply = await nodes[0].endpoint.call(nodes[1].address, "dm_fetch", body)
        assert reply.payload == value.to_wire(), f"data size {size}: inner {inner} B, wrapped {wrapped} B"
    assert crossed >= 1, "no size fell on the boundary"
    assert_no_handler_errors(nodes)


# ---- rate limit ---------------------------------------------------------------------------------------------


async def test_ping_flood_is_rate_limited_and_other_peers_are_still_served(mesh: list[DhtNode]) -> None:
    """Nine ports of one host share one host's budget (quotas and rate limits are per IP, not per
    port); a peer on another host is still served."""
    node = mesh[0]
    per_peer_rate = node.config.peer_request_rate  # also the burst of a host's token bucket
    before = node.counters.snapshot()
    frame_body = packb(["ping", [SOME_ID]])
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0
    floods = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(9)]
    async with raw_peer(loopback_host()) as peer:
        with contextlib.ExitStack() as closing:
            for flood in floods:
                closing.enter_context(flood)
                flood.bind((LOCALHOST, 0))
                flood.setblocking(False)
            for round_ in range(40):
                flood = floods[round_ % len(floods)]
                for _ in range(100):
                    try:
                        flood.sendto(bytes((REQUEST,)) + os.urandom(20) + frame_body, node.address)
                        sent += 1
                    except BlockingIOError:
                        pass
                await asyncio.sleep(0)  # let the node drain its socket between bursts
            # Another host's ping queues behind the whole flood: once it is answered, the flood was handled.
            assert await peer.ping(node) == node.node_id
        elapsed = loop.time() - started
        limited = counter_delta(node, before, "rate_limited")
        served = counter_delta(node, before, "rpc_in.ping") - 1  # minus the other peer's ping
        assert sent >= 3000
        assert limited > 0
        assert served + limited <= sent
        # One token bucket for the nine ports: at most its burst plus what it refilled meanwhile.
        assert served <= per_peer_rate * (1 + elapsed) + 1
        # Other hosts are still answered, and the mesh still works.
        assert await peer.ping(node) == node.node_id
        await assert_mesh_still_serves(mesh, peer)


async def test_big_replies_one_host_never_pulls_cannot_push_out_anothers(mesh: list[DhtNode], peer: RawPeer) -> None:
    """Each big reply is held for its asker to pull: one host asking for many and pulling none fills its
    own share (then is refused), while another's big reply is still held for it and pulled whole."""
    node = mesh[0]
    await prove(peer, node)
    value = Value(new_value_id(), os.urandom(60 * 1024))
    await mesh[1].put(KEY, value)
    assert node.store.get(KEY) == [value]
    replies = [await peer.mesh_call(node, "dm_fetch", {"k": KEY, "o": b"", "i": value.id}) for _ in range(40)]
    held = [reply for reply in replies if "big" in reply]
    refused = [reply for reply in replies if reply.get("err") == "too many transfers in progress"]
    assert held and refused and len(held) + len(refused) == 40
    assert len(held) * math.ceil(61 * 1024 / PIECE_SIZE) * PIECE_SIZE <= MAX_PENDING_BYTES_PER_PEER
    reply = await mesh[2].endpoint.call(node.address, "dm_fetch", {"k": KEY, "o": b"", "i": value.id})
    assert reply.payload == value.to_wire()  # another host's big reply is held for it, and pulled whole
