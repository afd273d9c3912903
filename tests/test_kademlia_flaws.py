"""Flaws F1–F23 of the stock `kademlia` 2.2.3 package, each quoted in the docstring of its test:
one or a few tests per flaw, each showing that dhtmesh does not have it.

Everything runs on 127.0.0.1 with real UDP sockets: in-process meshes from `make_mesh`, and bare sockets
(`RawPeer`) that speak the rpcudp framing by hand to play stock, spoofing or hostile peers. Nothing under
test is mocked; some tests observe a node's traffic by wrapping its transport's `sendto`.
"""

import ast
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import pickle
import random
import socket
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import dhtmesh
from dhtmesh.bootstrap.peers import PeerBook
from dhtmesh.crypto import Identity
from dhtmesh.node.admission import proof_message
from dhtmesh.node.dht import STORE_ALONG_MAX, DhtNode, PutRefused
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.node.routing.contact import Contact, distance
from dhtmesh.node.routing.table import RoutingTable
from dhtmesh.node.storage.store import ROW_OVERHEAD, Quotas
from dhtmesh.node.values import InvalidValue, Value, new_value_id, sign_value
from dhtmesh.node.wire import codec
from dhtmesh.node.wire.endpoint import RpcRefused
from dhtmesh.node.wire.fragments import MAX_PIECES, PIECE_SIZE
from dhtmesh.node.wire.messages import REFLECTION_FACTOR
from dhtmesh.node.wire.ratelimit import Address
from dhtmesh.testing import FAST, eventually, loopback_host, start_node, watch_datagrams

from conftest import MeshFactory
from support import subscribed

LOCALHOST = "127.0.0.1"
FOREVER = 10**9  # seconds: `store.expire(now=time.time() + FOREVER)` makes a node forget every value it holds


# ---- helpers ------------------------------------------------------------------------------------


def new_key() -> bytes:
    return os.urandom(20)


def flip_last_bit(raw: bytes) -> bytes:
    return raw[:-1] + bytes((raw[-1] ^ 1,))


def rpc_name(datagram: bytes) -> str | None:
    """The RPC name of a request datagram, or None for a reply or anything undecodable."""
    try:
        frame = codec.decode(datagram)
    except codec.MalformedDatagram:
        return None
    body = frame.body
    if frame.kind == codec.REQUEST and isinstance(body, list) and len(body) == 2 and isinstance(body[0], str):
        return body[0]
    return None


@contextlib.contextmanager
def drop_first(node: DhtNode, to: Address, name: str) -> Iterator[list[bytes]]:
    """Lose, on the wire, the first `name` request that `node` sends to `to` (one lost datagram)."""
    transport = node.endpoint.transport
    assert transport is not None
    original = transport.sendto
    dropped: list[bytes] = []

    def sendto(data: bytes, addr: Any = None) -> None:
        if not dropped and addr == to and rpc_name(bytes(data)) == name:
            dropped.append(bytes(data))
            return
        original(data, addr)

    transport.sendto = sendto  # type: ignore[method-assign]
    try:
        yield dropped
    finally:
        del transport.sendto


def counter(nodes: Iterable[DhtNode], name: str) -> int:
    return sum(node.counters.get(name) for node in nodes)


Answer = Callable[[str, list], Iterable[Any]]


class RawPeer:
    """A bare UDP socket on loopback that frames rpcudp datagrams by hand: a stock, spoofing or hostile peer."""

    def __init__(self, host: str = LOCALHOST) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address: Address = self.sock.getsockname()[:2]
        self.inbox: list[bytes] = []  # every datagram that arrived and was not the awaited reply
        self.requests: list[tuple[str, list]] = []  # requests answered by `serve`
        self.sent_bytes = 0
        self._server: asyncio.Task | None = None

    def send(self, to: Address, datagram: bytes) -> None:
        self.sock.sendto(datagram, to)
        self.sent_bytes += len(datagram)

    def request(self, to: Address, name: str, args: Any) -> bytes:
        message_id = os.urandom(codec.MESSAGE_ID_SIZE)
        self.send(to, codec.encode(codec.REQUEST, message_id, [name, args]))
        return message_id

    async def receive(self, within: float) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(self.sock, 65535), within)
        except TimeoutError:
            return None

    async def drain(self, quiet: float = 0.3, expected: int | None = None) -> list[bytes]:
        """Everything that arrives until nothing has for `quiet` seconds, or until the `expected` number
        of datagrams has (also kept in `inbox`)."""
        got: list[bytes] = []
        while len(got) != expected and (data := await self.receive(quiet)) is not None:
            got.append(data)
        self.inbox.extend(got)
        return got

    async def call(self, to: Address, name: str, args: Any, within: float = 2.0) -> tuple[Any, int]:
        """Send a request and return (decoded reply body, reply datagram size); other arrivals go to `inbox`."""
        message_id = self.request(to, name, args)
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            data = await self.receive(left)
            if data is None:
                break
            frame = codec.decode(data)
            if frame.kind == codec.RESPONSE and frame.message_id == message_id:
                return frame.body, len(data)
            self.inbox.append(data)
        raise AssertionError(f"no reply to {name} within {within} s")

    def serve(self, answer: Answer) -> None:
        """From now on, answer each request that arrives with the bodies `answer(name, args)` returns
        (a `bytes` item is sent as is, not framed); every datagram is kept in `inbox`."""
        if self._server is not None:
            self._server.cancel()

        async def loop() -> None:
            loop = asyncio.get_running_loop()
            while True:
                data, source = await loop.sock_recvfrom(self.sock, 65535)
                self.inbox.append(data)
                try:
                    frame = codec.decode(data)
                except codec.MalformedDatagram:
                    continue
                if frame.kind != codec.REQUEST or not (isinstance(frame.body, list) and len(frame.body) == 2):
                    continue
                name, args = frame.body
                self.requests.append((name, args))
                for reply in answer(name, args):
                    raw = reply if isinstance(reply, bytes) else codec.encode(codec.RESPONSE, frame.message_id, reply)
                    self.sock.sendto(raw, source[:2])

        self._server = asyncio.get_running_loop().create_task(loop())

    async def close(self) -> None:
        if self._server is not None:
            self._server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server
        self.sock.close()


@pytest.fixture
async def raw_peer() -> AsyncIterator[Callable[[], RawPeer]]:
    """`raw_peer()`: a new bare socket on 127.0.0.1; all are closed at the end of the test."""
    peers: list[RawPeer] = []

    def make(host: str = LOCALHOST) -> RawPeer:
        peer = RawPeer(host)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        await peer.close()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict]]:
    """Contexts passed to the loop's exception handler (unhandled task exceptions and the like)."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


async def admit_raw(nodes: Iterable[DhtNode], node_id: bytes, peer: RawPeer) -> Contact:
    """Put a raw peer in the nodes' routing tables as if it had proven `node_id` (test set-up only)."""
    contact = Contact(node_id, *peer.address)
    for node in nodes:
        node.admission.admit(contact)
        assert node_id in node.table
    return contact


def proof_from(identity: Identity, nonce: bytes) -> list:
    return [identity.public_key, identity.sign(proof_message(nonce))]


# ---- F1, F2: value size -------------------------------------------------------------------------


async def test_F1_a_60_kib_value_put_on_one_node_is_read_intact_from_another(make_mesh: MeshFactory) -> None:
    """F1 "set() max value 8,137 B": dhtmesh sends any message that does not fit one datagram as
    1,200-byte pieces (dm_part/dm_done out, dm_pull back), so a 60 KiB value is stored and read whole."""
    nodes = await make_mesh(5)
    key, data = new_key(), os.urandom(60 * 1024)
    reader = nodes[4]
    with watch_datagrams(nodes) as sent:
        result = await nodes[0].put(key, nodes[0].sign(key, Value(new_value_id(), data)))
        assert result.replicas == result.asked == 4
        assert all(node.store.get(key)[0].data == data for node in nodes)
        reader.store.expire(now=time.time() + FOREVER)  # the reader forgets its copy: it must come over the wire
        assert reader.store.get(key) == []
        values = await reader.get(key)
    assert [value.data for value in values] == [data]
    names = {rpc_name(datagram) for _, datagram in sent}
    assert {"dm_part", "dm_done", "dm_fetch", "dm_pull"} <= names
    assert max(len(datagram) for _, datagram in sent) <= codec.MAX_DATAGRAM


async def test_F2_a_value_over_64_kib_is_refused_by_the_receiver(make_mesh: MeshFactory) -> None:
    """F2 "the receiver has no size check": a replica refuses a value over 64 KiB (checked on every
    hop, not only by the sender), and still no datagram any node sends exceeds 1,400 B."""
    nodes = await make_mesh(3)
    key = new_key()
    huge = Value(new_value_id(), os.urandom(70 * 1024))
    with pytest.raises(InvalidValue, match="larger than"):
        await nodes[0].put(key, huge)
    with watch_datagrams(nodes) as sent:
        with pytest.raises(RpcRefused, match="larger than"):
            await nodes[0].endpoint.call(nodes[1].address, "dm_store", {"k": key, "v": huge.to_wire(), "ttl": 60.0})
    assert all(node.store.get(key) == [] for node in nodes)
    assert nodes[1].counters.get("refused_requests") >= 1
    assert "dm_part" in {rpc_name(datagram) for _, datagram in sent}
    assert max(len(datagram) for _, datagram in sent) <= codec.MAX_DATAGRAM


async def test_F2_reassembly_is_bounded(make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer]) -> None:
    """F2: a message in pieces can never exceed MAX_MESSAGE (96 KiB): a bigger request is refused by the
    sender before it sends, and a piece announcing more pieces than that is refused by the receiver. An
    address that has not proven itself may not send pieces at all (its source could be spoofed)."""
    nodes = await make_mesh(2)
    with pytest.raises(RpcRefused, match="too large"):
        await nodes[0].endpoint.call(nodes[1].address, "dm_store", {"k": new_key(), "pad": os.urandom(200 * 1024)})
    body = {"x": os.urandom(8), "i": 0, "c": MAX_PIECES + 1, "d": os.urandom(PIECE_SIZE)}
    with pytest.raises(RpcRefused, match="malformed piece"):
        await nodes[0].endpoint.call(nodes[1].address, "dm_part", body)
    stranger = raw_peer()
    reply, _ = await stranger.call(nodes[1].address, "dm_part", [os.urandom(20), body | {"c": 2}])
    assert reply == {"err": "unproven"}
    assert len(nodes[1].endpoint._fragments.incoming) == 0


# ---- F3, F4: put results, lost datagrams --------------------------------------------------------


async def test_F3_put_with_every_peer_gone_reports_zero_replicas(make_mesh: MeshFactory) -> None:
    """F3 "set() returned True after every STORE failed; with only dead peers it raised ValueError":
    put returns a count of remote acceptances, which is 0 (not an exception) when every peer is dead."""
    nodes = await make_mesh(3)
    for node in nodes[1:]:
        await node.stop()
    key = new_key()
    value = Value(new_value_id(), b"alone")
    result = await nodes[0].put(key, value)
    assert result.replicas == 0
    assert result.stored == 1  # only the node's own copy
    assert nodes[0].store.get(key) == [value]


async def test_F3_put_refused_by_every_peer_reports_zero_replicas(make_mesh: MeshFactory) -> None:
    """F3: peers that answer but refuse the STORE (here: their storage quota is 0) are not counted as
    replicas; put says it asked 2 nodes and 0 accepted."""
    nodes = await make_mesh(3, config=replace(FAST, quotas=Quotas(max_remote_bytes=0)))
    key = new_key()
    result = await nodes[0].put(key, Value(new_value_id(), b"nobody wants me"))
    assert (result.asked, result.replicas) == (2, 0)
    assert nodes[1].store.get(key) == nodes[2].store.get(key) == []
    assert counter(nodes[1:], "stores_refused") == 2


async def test_F4_a_contact_survives_one_lost_datagram(make_mesh: MeshFactory) -> None:
    """F4 "one timeout evicts a contact": every call retries once, so one lost datagram costs a retry,
    not the peer; the lookup and the put still succeed and the contact stays in the table."""
    nodes = await make_mesh(2)
    asker, peer = nodes
    retries = asker.counters.get("rpc_retries")
    with drop_first(asker, peer.address, "dm_find") as dropped:
        found = await asker.lookup(new_key())
    assert len(dropped) == 1
    assert [contact.node_id for contact in found] == [peer.node_id]
    assert peer.node_id in asker.table
    key = new_key()
    with drop_first(asker, peer.address, "dm_find") as dropped:  # a small put's store rides on its find
        result = await asker.put(key, Value(new_value_id(), b"despite a loss"))
    assert len(dropped) == 1
    assert result.replicas == 1
    assert peer.store.get(key)[0].data == b"despite a loss"
    assert peer.node_id in asker.table
    assert asker.counters.get("rpc_retries") >= retries + 2
    assert asker.counters.get("rpc_timeouts") == 0


# ---- F5, F6: value model ------------------------------------------------------------------------


async def test_F5_values_of_two_owners_coexist_and_neither_can_overwrite_the_other(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer]
) -> None:
    """F5 "single value per key; last writer wins": a key holds many values, identified by (owner, id);
    only the owner can replace its value, another owner cannot take its id, and a forgery fails."""
    nodes = await make_mesh(3)
    alice, bob = Identity.generate(), Identity.generate()
    key = new_key()
    alices = sign_value(alice, key, Value(7, b"alice", seq=1))
    bobs = sign_value(bob, key, Value(8, b"bob", seq=1))
    assert (await nodes[0].put(key, alices)).replicas == 2
    assert (await nodes[1].put(key, bobs)).replicas == 2

    takeover = sign_value(bob, key, Value(7, b"EVIL", seq=99))  # bob signs a value with alice's id
    with pytest.raises(PutRefused, match="another owner"):
        await nodes[1].put(key, takeover)
    body = {"k": key, "v": takeover.to_wire(), "ttl": 60}
    reply = await nodes[1].endpoint.call(nodes[2].address, "dm_store", body)  # sent straight to a replica
    assert reply.payload == {"stored": False, "why": "this value id belongs to another owner"}
    forged = replace(alices, data=b"EVIL", seq=2)  # alice's owner field, bob's data
    with pytest.raises(InvalidValue, match="signature"):
        await nodes[1].put(key, forged)
    with pytest.raises(RpcRefused, match="signature"):
        await nodes[1].endpoint.call(nodes[2].address, "dm_store", {"k": key, "v": forged.to_wire(), "ttl": 60})
    # A stock peer's plain store adds an unsigned value beside them; it replaces nothing.
    peer = raw_peer()
    accepted, _ = await peer.call(nodes[2].address, "store", [os.urandom(20), key, b"EVIL"])
    assert accepted is True

    values = await nodes[2].get(key)
    by_owner = {value.owner: value.data for value in values}
    assert by_owner == {alice.public_key: b"alice", bob.public_key: b"bob", b"": b"EVIL"}
    for node in nodes[:2]:
        assert {v.data for v in node.store.get(key) if v.signed} == {b"alice", b"bob"}
    # The owner itself can edit, with a higher seq.
    newer = sign_value(alice, key, Value(7, b"alice v2", seq=2))
    assert (await nodes[0].put(key, newer)).replicas == 2
    assert {v.data for v in await nodes[1].get(key) if v.owner == alice.public_key} == {b"alice v2"}


async def test_F6_a_list_or_dict_value_cannot_break_get(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer]
) -> None:
    """F6 "rpc_store accepts any msgpack type; a list value made get() raise": values are bytes with a
    type schema; a stock store of a list or dict, or a dm_store of a malformed value, is refused and later
    gets work."""
    nodes = await make_mesh(3)
    key = new_key()
    peer = raw_peer()
    for plain in ([1, 2, 3], {"a": 1}, None):
        peer.request(nodes[1].address, "store", [os.urandom(20), key, plain])
    for wire in ([1, 0, [1, 2], b"", 0, b"", ""], [1, 0, {"x": 1}, b"", 0, b"", ""], ["x"] * 7, [1, 2]):
        with pytest.raises(RpcRefused, match="invalid value"):
            await nodes[0].endpoint.call(nodes[1].address, "dm_store", {"k": key, "v": wire, "ttl": 60.0})
    await peer.drain(0.3)
    assert nodes[1].counters.get("refused_requests") >= 7
    assert nodes[1].counters.get("handler_errors") == 0
    assert nodes[1].store.get(key) == []
    value = Value(new_value_id(), b"plain bytes")
    assert (await nodes[0].put(key, value)).replicas == 2
    assert await nodes[2].get(key) == [value]
    found, _ = await peer.call(nodes[1].address, "find_value", [os.urandom(20), key])
    assert found == {"value": b"plain bytes"}


# ---- F7: hostile replies ------------------------------------------------------------------------


def hostile_answers(fake_node_id: bytes, own: Address) -> Answer:
    """A peer answering every request with a different kind of garbage, round after round."""
    junk_nodes = [
        ["not-a-node"],
        [b"short", LOCALHOST, 1],
        42,
        None,
        [os.urandom(20), 5, "x"],
        [fake_node_id, *own],  # well-formed, but it will not prove the id
    ]
    find_replies: list[Any] = [
        {"ok": {"nodes": junk_nodes, "vals": [["x"], 5, [1] * 7], "refs": [[b"o", "i", "s"], "x"], "more": "lots"}},
        "not an envelope",
        {"ok": "nodes"},
        {"ok": {"nodes": "x", "vals": "y", "refs": 3, "more": 1}},  # "more pages" that are garbage too
        {"big": [os.urandom(8), 3]},  # a reply "too big for a datagram", pulled back as garbage
        {"big": "x"},
        {"err": 12345},
        [1, 2, 3],
        b"\xc1not msgpack at all",  # goes raw: not even a frame
        {"ok": {"nodes": [[os.urandom(20), "256.1.1.1", 70000]] * 50}},
    ]
    rounds = iter(range(1 << 30))

    def answer(name: str, args: list) -> Iterable[Any]:
        if name == "dm_pull":
            return [{"ok": b"\xc1\xc1\xc1"}]
        return [find_replies[next(rounds) % len(find_replies)]]

    return answer


async def test_F7_a_peer_answering_garbage_does_not_break_get(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer], loop_errors: list[dict]
) -> None:
    """F7 "one node answering FIND_* with garbage made every get() raise": every field of a reply is
    type-checked and a bad reply only marks that peer failed, so gets through a hostile peer succeed."""
    nodes = await make_mesh(4)
    key = new_key()
    value = Value(new_value_id(), b"still here")
    await nodes[0].put(key, value)
    hostile = raw_peer()
    fake_id = new_key()
    hostile.serve(hostile_answers(fake_id, hostile.address))
    readers = nodes[1:]  # nodes[0] keeps its copy; the readers forget theirs and must fetch it
    for node in readers:
        node.store.expire(now=time.time() + FOREVER)
    for _ in range(3):
        for node in readers:
            # The hostile peer sits right on the key, so every lookup asks it first. It is dropped from
            # the table when a call to it fails; put it back each time.
            await admit_raw([node], flip_last_bit(key), hostile)
            assert await asyncio.wait_for(node.get(key), 10) == [value]
    assert len(hostile.requests) >= 9
    assert all(fake_id not in node.table for node in nodes)
    assert counter(nodes, "handler_errors") == 0
    assert loop_errors == []


async def test_F7_contacts_in_a_reply_are_dialled_only_at_numeric_addresses(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer], loop_errors: list[dict]
) -> None:
    """F7 ("replies must be validated"): a contact's host in a find reply must be an IP address. A host
    name would make the node resolve it with a blocking getaddrinfo inside `sendto`, on the event loop, at a
    hostile peer's request; so such contacts are dropped like any other malformed triple."""
    nodes = await make_mesh(2)
    hostile = raw_peer()
    key = new_key()
    named = [
        [flip_last_bit(key), "localhost", hostile.address[1]],  # a host name (resolved from /etc/hosts)
        [key[:-1] + bytes((key[-1] ^ 2,)), "256.1.1.1", 4000],  # neither an address nor a resolvable name
    ]
    hostile.serve(lambda name, args: [{"ok": {"nodes": named}}] if name == "dm_find" else [])
    await admit_raw(nodes[:1], key[:-1] + bytes((key[-1] ^ 4,)), hostile)
    with watch_datagrams(nodes[:1]) as sent:
        await asyncio.wait_for(nodes[0].lookup(key), 10)
    assert any(name == "dm_find" for name, _ in hostile.requests)
    assert {destination[0] for destination, _ in sent} <= {LOCALHOST, *(node.address[0] for node in nodes)}
    assert loop_errors == []


async def test_F7_a_peer_offering_made_up_close_ids_holds_up_no_lookup(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer]
) -> None:
    """A proven peer near a key answers every find with 20 ids closer than anyone's, each at a /24 of its
    own where nothing answers: a lookup tries at most `per_referrer` of them (each costs a timeout), stops
    believing the peer, and finds the real nodes (before: it waited out all 20, 8.8 s, every lookup)."""
    nodes = await make_mesh(4)
    key = new_key()
    hostile = raw_peer()
    made_up = [[key[:-2] + bytes((index, key[-1])), f"127.{100 + index}.0.9", 9] for index in range(20)]
    hostile.serve(lambda name, args: [{"ok": {"nodes": made_up}}] if name == "dm_find" else [])
    await admit_raw(nodes[:1], key[:-1] + bytes((key[-1] ^ 0x80,)), hostile)
    with watch_datagrams(nodes[:1]) as sent:
        found = await asyncio.wait_for(nodes[0].lookup(key), 30)
    fakes = {(host, port) for _, host, port in made_up}
    tried = {destination for destination, _ in sent if tuple(destination) in fakes}
    assert 0 < len(tried) <= FAST.per_referrer
    assert {c.node_id for c in found} >= {node.node_id for node in nodes[1:]}  # the real ones, all of them


# How a misbehaving replica answers: its reply to dm_store (or dm_hello), its reply to each dm_pull, and
# its reply to each dm_part (pieces of a request too big for one datagram).
MISBEHAVIOURS: dict[str, tuple[Any, Any, Any]] = {
    "not-an-envelope": ("not an envelope", None, None),
    "ok-of-the-wrong-type": ({"ok": [1, 2]}, None, None),
    "err-of-the-wrong-type": ({"err": None}, None, None),
    "raw-non-frame": (b"\xc1 not a frame", None, None),
    "big-handle-then-non-msgpack-pieces": ({"big": [b"transfer", 2]}, {"ok": b"\xc1\xc1\xc1"}, None),
    "big-handle-then-non-bytes-pieces": ({"big": [b"transfer", 2]}, {"ok": 5}, None),
    "big-handle-then-refused-pieces": ({"big": [b"transfer", 2]}, {"err": "no such piece"}, None),
    "refuses-the-pieces-of-a-big-request": ({"ok": {"stored": True}}, None, {"err": "too many transfers in progress"}),
}


def misbehaving(case: str, rpc: str) -> Answer:
    """Answers dm_find sanely (so the peer is a replica) and `rpc` as MISBEHAVIOURS[case] says."""
    reply, piece, part = MISBEHAVIOURS[case]

    def answer(name: str, args: list) -> Iterable[Any]:
        if name == "dm_find":
            return [{"ok": {"nodes": []}}]
        if name == rpc or (name == "dm_done" and part is None):
            return [reply]
        if name == "dm_pull":
            return [piece]
        if name == "dm_part":
            return [part if part is not None else {"ok": True}]
        return []

    return answer


@pytest.mark.parametrize("case", list(MISBEHAVIOURS))
async def test_F7_a_replica_answering_store_with_garbage_does_not_break_put(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer], loop_errors: list[dict], case: str
) -> None:
    """F7: a peer that answers finds sanely but STOREs with garbage (or refuses the pieces of a big value)
    only loses its own replica: put returns, and counts the two good replicas."""
    nodes = await make_mesh(3)
    hostile = raw_peer()
    hostile.serve(misbehaving(case, "dm_store"))
    key = new_key()
    await admit_raw(nodes[:1], flip_last_bit(key), hostile)
    # Big enough to be stored after the lookup (dm_store), not along it (dm_find).
    value = Value(new_value_id(), os.urandom(3000 if case.startswith("refuses") else STORE_ALONG_MAX + 1))
    result = await asyncio.wait_for(nodes[0].put(key, value), 10)
    assert (result.asked, result.replicas) == (3, 2)
    assert {"dm_store", "dm_part"} & {name for name, _ in hostile.requests}  # the store was tried
    assert all(node.store.get(key) == [value] for node in nodes)
    assert loop_errors == []


@pytest.mark.parametrize("stored", ["yes", 1, None, [True]])
async def test_F3_a_replica_claiming_a_store_along_the_lookup_in_a_bad_shape_is_not_counted(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer], loop_errors: list[dict], stored: Any
) -> None:
    """F3 for a small put, whose store rides on the lookup's dm_find: only `"stored": true` counts."""
    nodes = await make_mesh(3)
    hostile = raw_peer()
    hostile.serve(lambda name, args: [{"ok": {"nodes": [], "stored": stored}}] if name == "dm_find" else [])
    key = new_key()
    await admit_raw(nodes[:1], flip_last_bit(key), hostile)
    value = Value(new_value_id(), b"small")
    result = await asyncio.wait_for(nodes[0].put(key, value), 10)
    assert (result.asked, result.replicas) == (3, 2)
    assert any(name == "dm_find" and "s" in args[1] for name, args in hostile.requests)
    assert all(node.store.get(key) == [value] for node in nodes)
    assert loop_errors == []


@pytest.mark.parametrize("case", [case for case in MISBEHAVIOURS if not case.startswith("refuses")])
async def test_F7_a_bootstrap_peer_answering_hello_with_garbage_does_not_break_join(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer], case: str
) -> None:
    """F7: one bad address among the bootstrap peers (answering dm_hello with garbage) does not stop the
    node from joining through the good ones, and never enters its routing table."""
    nodes = await make_mesh(2)
    hostile = raw_peer()
    hostile.serve(misbehaving(case, "dm_hello"))
    newcomer = await start_node()
    try:
        known = await asyncio.wait_for(newcomer.join([hostile.address, nodes[0].address]), 10)
        assert known >= 1
        assert nodes[0].node_id in newcomer.table
        assert all(contact.address != hostile.address for contact in newcomer.table.contacts())
    finally:
        await newcomer.stop()


# ---- F8, F9, F10, F11: routing identity and reflection --------------------------------------------


async def test_F8_a_node_that_joins_itself_does_not_list_itself(make_mesh: MeshFactory) -> None:
    """F8 "a node that bootstraps to itself puts its own id in its routing table": its own address is
    skipped by join, its own proven id is never admitted, and lookups exclude it."""
    lone = await start_node()
    try:
        assert await lone.join([lone.address]) == 0
        assert await lone.admission.challenge(lone.address) is not None  # it proves itself to itself...
        assert len(lone.table) == 0  # ...and still does not list itself
        assert lone.node_id not in lone.table
    finally:
        await lone.stop()
    nodes = await make_mesh(3)
    assert await nodes[1].join([nodes[1].address, nodes[0].address]) >= 1
    for node in nodes:
        assert node.node_id not in node.table
        assert node.node_id not in [c.node_id for c in await node.lookup(node.node_id)]
    assert RoutingTable(nodes[0].node_id).add(nodes[0].contact) is False


async def test_F9_a_self_chosen_id_never_enters_the_routing_table(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer]
) -> None:
    """F9 "node ids are self-chosen and not verified": a contact enters the table only after answering a
    nonce with a signature by a key whose SHA-1 is its id, from its address; chosen ids never do."""
    nodes = await make_mesh(3)
    node = nodes[0]
    key = new_key()
    before = {c.node_id for c in node.table.contacts()}
    squatter = raw_peer()
    impostor = Identity.generate()  # a real key, but not the one behind the claimed ids
    claimed = [key, flip_last_bit(key)]  # ids sitting exactly on a key
    proofs = [
        lambda nonce: [os.urandom(32), os.urandom(64)],  # garbage
        lambda nonce: proof_from(impostor, nonce),  # a good signature, by a key whose SHA-1 is not the id
    ]
    for round_, (claim, proof) in enumerate(zip(claimed, proofs, strict=True)):
        squatter.serve(
            lambda name, args, claim=claim, proof=proof: (
                [{"ok": {"id": claim}, "pf": proof(args[1].get("n", b""))}] if name == "dm_hello" else []
            )
        )
        squatter.request(node.address, "ping", [claim])
        squatter.request(node.address, "dm_find", [claim, {"t": key}])
        squatter.request(node.address, "dm_hello", [claim, {}])
        await eventually(lambda round_=round_: node.counters.get("bad_proofs") == round_ + 1)
    await asyncio.sleep(0.2)
    assert node.counters.get("bad_proofs") == 2
    assert sum(1 for name, _ in squatter.requests if name == "dm_hello") == 2  # it was challenged twice...
    contacts = node.table.contacts()
    assert {c.node_id for c in contacts} == before  # ...and admitted under no id
    assert all(c.address != squatter.address for c in contacts)
    assert not any(claim in node.table for claim in claimed)
    # The same socket with an id it can prove (the SHA-1 of its key) is admitted: the check is the proof.
    honest = Identity.generate()
    squatter.serve(lambda name, args: [{"ok": {"id": honest.node_id}, "pf": proof_from(honest, args[1]["n"])}])
    squatter.request(node.address, "dm_hello", [honest.node_id, {}])
    await eventually(lambda: honest.node_id in node.table)
    assert node.table.get(honest.node_id) == Contact(honest.node_id, *squatter.address)


async def test_F10_an_unproven_source_triggers_no_stores(raw_peer: Callable[[], RawPeer]) -> None:
    """F10 "push on welcome is amplification: one 50 B ping with a fresh id made a node send 200 STOREs":
    values are handed only to proven contacts; an unproven (possibly spoofed) source gets its replies and at
    most a small challenge."""
    node = await start_node()
    try:
        for index in range(200):
            await node.put(hashlib.sha1(b"key%d" % index).digest(), Value(new_value_id(), os.urandom(150)))
        peer = raw_peer()
        for name, args in (
            ("ping", [os.urandom(20)]),
            ("dm_hello", [os.urandom(20), {}]),
            ("dm_find", [os.urandom(20), {"t": os.urandom(20)}]),
            ("find_node", [os.urandom(20), os.urandom(20)]),
        ):
            peer.request(node.address, name, args)
        received = await peer.drain(quiet=0.8)
        requests = [rpc_name(datagram) for datagram in received]
        assert requests.count(None) == 4  # the four replies
        challenges = [name for name in requests if name is not None]
        assert set(challenges) <= {"dm_hello"} and len(challenges) <= 2  # one challenge, and its one retry
        assert sum(map(len, received)) < codec.MAX_DATAGRAM  # stock: 200 STOREs, 35,000 B
        assert node.counters.get("handoff_values") == 0
    finally:
        await node.stop()


async def test_F10_values_are_handed_only_after_the_address_proved_itself(
    raw_peer: Callable[[], RawPeer],
) -> None:
    """F10 (control): the same source, once it answers the challenge with a valid proof, is a proven
    contact and does get the values it should hold: the push waits for the round trip."""
    node = await start_node()
    try:
        newcomer = Identity.generate()
        key = flip_last_bit(newcomer.node_id)
        await node.put(key, Value(new_value_id(), b"for the newcomer"))
        peer = raw_peer()

        def answer(name: str, args: list) -> Iterable[Any]:
            if name == "dm_hello":
                return [{"ok": {"id": newcomer.node_id}, "pf": proof_from(newcomer, args[1]["n"])}]
            if name == "dm_versions":
                return [{"ok": []}]  # holds nothing yet
            if name == "dm_store":
                return [{"ok": {"stored": True}}]
            return []

        peer.serve(answer)
        peer.request(node.address, "dm_find", [newcomer.node_id, {"t": newcomer.node_id}])
        await eventually(lambda: any(name == "dm_store" for name, _ in peer.requests))
        names = [name for name, _ in peer.requests]
        assert names.index("dm_hello") < names.index("dm_versions") < names.index("dm_store")
    finally:
        await node.stop()


async def test_F11_replies_to_unproven_sources_are_a_small_multiple_of_the_request(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer]
) -> None:
    """F11 "find_value 78 → 61,471 B (788×) for a stored 60 KiB value", and the attack on dhtmesh that
    found 17× reflection: a reply to an address that has not proven itself is at most REFLECTION_FACTOR
    times its request, whatever is asked (a big value is not even offered, so there is nothing to pull)."""
    nodes = await make_mesh(5)
    key = new_key()
    big = Value(new_value_id(), os.urandom(60 * 1024))
    await nodes[0].put(key, big)
    holder = nodes[1]
    assert holder.store.get(key) == [big]
    peer = raw_peer()
    asked = [
        ("ping", [os.urandom(20)]),
        ("find_node", [os.urandom(20), key]),
        ("find_value", [os.urandom(20), key]),
        ("dm_hello", [os.urandom(20), {"n": os.urandom(16)}]),
        ("dm_find", [os.urandom(20), {"t": key, "v": True, "n": os.urandom(16)}]),
        ("dm_versions", [os.urandom(20), {"k": key}]),
        ("dm_fetch", [os.urandom(20), {"k": key, "o": b"", "i": big.id}]),
    ]
    replies = {}
    for name, args in asked:
        request_size = len(codec.encode(codec.REQUEST, bytes(20), [name, args]))
        replies[name], size = await peer.call(holder.address, name, args)
        assert size <= min(codec.MAX_DATAGRAM, REFLECTION_FACTOR * request_size), name
    assert "value" not in replies["find_value"] and replies["find_node"]  # answered with fewer contacts
    assert replies["dm_fetch"] == {"err": "unproven"}  # no big transfer for an address never proven
    assert len(holder.endpoint._fragments.outgoing) == 0


async def test_F11_a_big_reply_is_pulled_by_its_proven_asker_only_and_each_piece_twice_at_most(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer]
) -> None:
    """A big reply is left with the responder for its (proven) asker to pull: never for another
    address, and each piece at most twice (one retry), so a reply cannot be pulled over and over."""
    nodes = await make_mesh(2)
    key = new_key()
    big = Value(new_value_id(), os.urandom(60 * 1024))
    await nodes[0].put(key, big)
    holder = nodes[1]
    peer, spoofer = raw_peer(), raw_peer()
    await admit_raw([holder], os.urandom(20), peer)  # proven, as its answer to a challenge would make it
    reply, _ = await peer.call(holder.address, "dm_fetch", [os.urandom(20), {"k": key, "o": b"", "i": big.id}])
    transfer_id, count = reply["big"]
    refused, _ = await spoofer.call(holder.address, "dm_pull", [os.urandom(20), {"x": transfer_id, "i": 0}])
    assert refused == {"err": "unknown transfer"}
    pieces = []
    for index in range(count):
        reply, size = await peer.call(holder.address, "dm_pull", [os.urandom(20), {"x": transfer_id, "i": index}])
        assert size <= codec.MAX_DATAGRAM
        pieces.append(reply["ok"])
    assert codec.unpack(b"".join(pieces))["ok"][2] == big.data
    again, _ = await peer.call(holder.address, "dm_pull", [os.urandom(20), {"x": transfer_id, "i": 0}])
    assert again == {"ok": pieces[0]}  # a retry is served once
    third, _ = await peer.call(holder.address, "dm_pull", [os.urandom(20), {"x": transfer_id, "i": 0}])
    assert third == {"err": "no such piece"}


# ---- F12, F13: hostile input and resource limits -------------------------------------------------


def hostile_datagrams() -> list[bytes]:
    request, mid = bytes((codec.REQUEST,)), bytes(20)
    node_id = os.urandom(20)

    def req(name: str, args: Any) -> bytes:
        return codec.encode(codec.REQUEST, os.urandom(20), [name, args])

    inner_done = codec.pack(["dm_done", [node_id, {"x": b"12345678"}]])
    transfer = os.urandom(8)
    return [
        request + mid + b"\xc1",  # reserved msgpack byte
        request + mid + b"\x91" * 60_000 + b"\xc0",  # 60,000-deep nesting
        request + mid + b"\xc6\xff\xff\xff\xff" + b"x" * 10,  # bin32 claiming 4 GiB
        request + mid + b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 G items
        request + mid + b"\x92\xa4ping",  # truncated
        b"\x07" + mid + codec.pack(["ping", [node_id]]),  # unknown frame type
        b"\x00",  # too short
        request + mid + codec.pack({1: 2}),  # non-string map key
        request + mid + codec.pack("ping"),
        request + mid + codec.pack([1, 2]),
        request + mid + codec.pack(["ping", "x"]),
        req("ping", [b"\x00" * 64]),  # 64-byte id
        req("ping", []),
        req("store", [1, 2, 3]),
        req("store", [node_id, "key", b"v"]),
        req("find_node", ["x"]),
        req("find_value", [node_id, 5]),
        req("no_such_rpc", []),
        req("dm_find", [node_id, {"t": 5}]),
        req("dm_find", [b"\x00" * 64, {"t": node_id}]),
        req("dm_find", [node_id, {"t": node_id, "p": -1}]),
        req("dm_find", [node_id, {"t": node_id, "p": True}]),
        req("dm_store", [node_id, {"k": node_id, "v": [1] * 7, "ttl": "x"}]),
        req("dm_store", [node_id, {"k": node_id, "v": [1, 0, b"d", b"", 0, b"", ""], "ttl": 1e300}]),
        req("dm_fetch", [node_id, {"k": node_id, "o": 5, "i": "x"}]),
        req("dm_sub", [node_id, {"k": node_id, "ttl": -1}]),
        req("dm_notify", [node_id, {"k": node_id, "v": "x"}]),
        req("dm_part", [node_id, {"x": transfer, "i": 5, "c": 2, "d": b"x"}]),
        req("dm_part", [node_id, {"x": transfer, "i": 0, "c": 2, "d": b"x" * (PIECE_SIZE + 1)}]),
        req("dm_part", [node_id, {"x": transfer, "i": 0, "c": 2, "d": inner_done[:5]}]),
        req("dm_part", [node_id, {"x": transfer, "i": 1, "c": 2, "d": inner_done[5:]}]),
        req("dm_done", [node_id, {"x": transfer}]),  # a transfer holding a transfer RPC
        req("dm_done", [node_id, {"x": 5}]),
        req("dm_pull", [node_id, {"x": b"12345678", "i": "x"}]),
        codec.encode(codec.RESPONSE, os.urandom(20), {"ok": True}),  # a reply nobody asked for
    ]


def random_datagrams(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    names = [
        "ping",
        "store",
        "find_node",
        "find_value",
        "stun",
        "dm_hello",
        "dm_find",
        "dm_store",
        "dm_fetch",
        "dm_sub",
        "dm_unsub",
        "dm_notify",
        "dm_versions",
        "dm_part",
        "dm_done",
        "dm_pull",
    ]
    fields = ["t", "k", "v", "ttl", "x", "i", "c", "d", "p", "n", "o"]

    def thing(depth: int = 0) -> Any:
        choice = rng.randrange(9 if depth < 3 else 6)
        if choice == 0:
            return rng.randbytes(rng.choice([0, 1, 8, 16, 20, 32, 64, 300]))
        if choice == 1:
            return rng.choice([0, -1, 1, 2**63, -(2**63), 2**64 - 1, 7])
        if choice == 2:
            return rng.choice(["", "x", "t", "k", "v", "n", "127.0.0.1"])
        if choice == 3:
            return rng.choice([None, True, False, 0.5, float("inf")])
        if choice == 4:
            return rng.choice(fields)
        if choice == 5:
            return rng.random()
        if choice in (6, 7):
            return [thing(depth + 1) for _ in range(rng.randrange(8))]
        return {rng.choice(fields): thing(depth + 1) for _ in range(rng.randrange(6))}

    datagrams = []
    for _ in range(count):
        shape = rng.randrange(4)
        if shape == 0:
            datagrams.append(rng.randbytes(rng.randrange(1, 200)))
        elif shape == 1:
            datagrams.append(codec.encode(codec.REQUEST, rng.randbytes(20), [rng.choice(names), thing()]))
        else:
            body = {key: thing(1) for key in rng.sample(fields, 3)}
            request = [rng.choice(names), [rng.randbytes(20), body]]
            datagrams.append(codec.encode(codec.REQUEST, rng.randbytes(20), request))
    return datagrams


async def test_F12_hostile_datagrams_leave_no_unhandled_exceptions(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer], loop_errors: list[dict]
) -> None:
    """F12 "hostile datagrams surfaced as unhandled task exceptions": decoding is bounded (msgpack size
    and depth limits) and every argument is type-checked, so bad input is counted and dropped, no handler
    crashes, and the node keeps serving."""
    nodes = await make_mesh(2)
    node = nodes[1]
    peer = raw_peer()
    crafted = hostile_datagrams()
    fuzzed = random_datagrams(seed=12, count=300)
    started = time.monotonic()
    for datagram in crafted + fuzzed:
        peer.send(node.address, datagram)
    await peer.drain(quiet=0.5)
    assert time.monotonic() - started < 5
    for name in ("malformed_datagrams", "malformed_requests", "refused_requests", "unexpected_responses"):
        assert node.counters.get(name) > 0, name
    assert node.counters.get("malformed_datagrams") >= 7
    assert node.counters.get("handler_errors") == 0
    assert loop_errors == []
    reply, _ = await peer.call(node.address, "ping", [os.urandom(20)])
    assert reply == node.node_id
    key = new_key()
    assert (await nodes[0].put(key, Value(new_value_id(), b"fine"))).replicas == 1
    assert [v.data for v in node.store.get(key)] == [b"fine"]


async def flood_stores(peer: RawPeer, to: Address, count: int, key: bytes | None = None, size: int = 200) -> int:
    """`count` distinct stock stores from one socket; returns how many the node accepted."""
    for _ in range(count):
        peer.request(to, "store", [os.urandom(20), key or new_key(), os.urandom(size)])
        await asyncio.sleep(0)
    # Every store is answered (True or False): waiting for silence only after the last answer is waste.
    replies = [codec.decode(datagram).body for datagram in await peer.drain(quiet=0.4, expected=count)]
    return sum(1 for reply in replies if reply is True)


async def test_F13_a_flood_of_stores_from_one_host_is_bounded_by_its_share(
    raw_peer: Callable[..., RawPeer],
) -> None:
    """F13 "no quota and no rate limit: 20,000 STOREs from one socket → 8,588 keys stored", and the attack
    on dhtmesh that filled two nodes' quota from 9 ports of one host: every origin *host* gets at most
    `peer_share` of the remote quota, whatever ports it uses; stock peers, which never prove their
    address, share one such share between them; the remote quota caps everyone."""
    quotas = Quotas(max_remote_bytes=10_000, peer_share=1 / 4)
    node = await start_node(replace(FAST, quotas=quotas, peer_request_rate=100_000.0))
    others: list[DhtNode] = []
    try:
        per_value = 200 + ROW_OVERHEAD
        per_peer = int(quotas.max_remote_bytes * quotas.peer_share) // per_value
        from_one_host = [await flood_stores(raw_peer(), node.address, 30) for _ in range(9)]
        assert sum(from_one_host) == per_peer
        assert await flood_stores(raw_peer(loopback_host()), node.address, 30) == 0  # the stock share is used
        others = [await start_node() for _ in range(4)]
        accepted = []
        for other in others:
            await other.join([node.address])
            values = [Value(new_value_id(), os.urandom(200)) for _ in range(30)]
            accepted.append(sum([await other.store_on(node.contact, new_key(), value, 60.0) for value in values]))
        assert all(count <= per_peer for count in accepted)
        assert accepted[0] == per_peer  # a proven peer on another host has its own share...
        assert per_peer + sum(accepted) == quotas.max_remote_bytes // per_value  # ...until the total is used up
        assert node.store.remote_bytes <= quotas.max_remote_bytes
        assert node.store.counts()["storage_values"] == per_peer + sum(accepted)
    finally:
        for started in [node, *others]:
            await started.stop()


async def test_F13_values_per_key_are_capped(make_mesh: MeshFactory) -> None:
    """F13: one key holds at most `max_values_per_key` values, whoever sends them."""
    nodes = await make_mesh(2, config=replace(FAST, quotas=Quotas(max_values_per_key=8, key_share=1.0)))
    key = new_key()
    refused = 0
    owner = Identity.generate()
    for _ in range(20):
        wire = sign_value(owner, key, Value(new_value_id(), os.urandom(32))).to_wire()
        reply = await nodes[0].endpoint.call(nodes[1].address, "dm_store", {"k": key, "v": wire, "ttl": 60.0})
        refused += reply.payload == {"stored": False, "why": "too many values under this key"}
    assert len(nodes[1].store.get(key)) == 8
    assert refused == 12


async def test_F13_requests_from_one_address_are_rate_limited(raw_peer: Callable[[], RawPeer]) -> None:
    """F13: a token bucket per address (and one in total) caps the requests a node serves."""
    node = await start_node(replace(FAST, peer_request_rate=50.0))
    try:
        peer = raw_peer()
        started = time.monotonic()
        for _ in range(400):
            peer.request(node.address, "ping", [os.urandom(20)])
        elapsed = time.monotonic() - started
        answered = len(await peer.drain(quiet=0.4))
        assert 0 < answered <= 50 + 50 * elapsed + 5
        assert node.counters.get("rate_limited") >= 400 - answered - 5
        other = raw_peer()  # another address is served meanwhile
        reply, _ = await other.call(node.address, "ping", [os.urandom(20)])
        assert reply == node.node_id
    finally:
        await node.stop()


# ---- F14, F15, F16, F17: replication and routing quality ---------------------------------------


async def test_F14_a_newcomer_closest_to_a_key_receives_its_values(make_mesh: MeshFactory) -> None:
    """F14 "welcome_if_new tests the wrong point (digest of the key), new nodes never receive keys": the
    closest holder hands a key's values to a proven newcomer that is now among the k closest to the key."""
    config = replace(FAST, k=4)
    nodes = await make_mesh(8, config=config)
    identity = Identity.generate()
    key = flip_last_bit(identity.node_id)  # the newcomer will be closer to the key than anyone
    value = nodes[0].sign(key, Value(new_value_id(), b"hand me over"))
    result = await nodes[0].put(key, value)
    assert result.replicas >= 3
    newcomer = DhtNode(identity, config, rules=RECORD_RULES)
    await newcomer.start(LOCALHOST, 0)
    try:
        assert newcomer.store.get(key) == []
        await newcomer.join([nodes[0].address])
        await eventually(lambda: newcomer.store.get(key) == [value])
        assert counter(nodes, "handoff_values") >= 1
        everyone = [*nodes, newcomer]
        assert min(everyone, key=lambda n: distance(n.node_id, key)) is newcomer
    finally:
        await newcomer.stop()


async def test_F15_closest_returns_the_true_k_closest(make_mesh: MeshFactory) -> None:
    """F15 "find_neighbors returned fewer than available in 21% of calls, not the true k closest in 93%":
    `RoutingTable.closest` is a full sort of the table, and a lookup finds the true k closest of the mesh."""
    nodes = await make_mesh(30)
    k = FAST.k
    rng = random.Random(15)
    for node in nodes[::6]:
        for _ in range(10):
            target = rng.randbytes(20)
            contacts = node.table.contacts()  # afresh: lookups admit new contacts as they go
            assert len(contacts) >= k
            brute = sorted(contacts, key=lambda c: distance(c.node_id, target))
            assert node.table.closest(target) == brute[:k]
            assert node.table.closest(target, 5) == brute[:5]
            assert node.table.closest(target, 100) == brute
            assert node.table.closest(target, exclude=[brute[0].node_id]) == brute[1 : k + 1]
            found = await node.lookup(target)
            others = sorted((n.node_id for n in nodes if n is not node), key=lambda i: distance(i, target))
            assert [c.node_id for c in found] == others[:k]


def test_F15_bucket_edges_are_half_open() -> None:
    """F15 (also read in the stock code: `long_id < range[1]` on inclusive buckets): ids at every bucket
    edge, including 0 and 2^160-1, land in exactly one bucket and are found again."""
    table = RoutingTable(bytes(20), k=2)
    edges = sorted({1 << bit for bit in range(160)} | {(1 << bit) - 1 for bit in range(1, 161)})
    added = []
    for index, number in enumerate(edges):
        contact = Contact(number.to_bytes(20, "big"), LOCALHOST, 1000 + index)
        if table.add(contact):
            added.append(contact)
    # Bucket [2^b, 2^(b+1)) holds exactly its two edges, so with k=2 every one of them fits.
    assert len(added) == len(edges) == 319
    assert all(table.get(c.node_id) == c and c.node_id in table for c in added)
    assert sorted(table.contacts(), key=lambda c: c.id_int) == sorted(added, key=lambda c: c.id_int)
    top = (1 << 160) - 1
    assert table.closest(top.to_bytes(20, "big"), 1)[0].id_int == top


async def test_F16_a_burst_of_50_concurrent_puts_loses_nothing(make_mesh: MeshFactory) -> None:
    """F16 "no retransmit or congestion control: at concurrency 50 with N=20, 50 RPC timeouts, keys on only
    9 of 20 replicas": a 4 MiB receive buffer, bounded in-flight calls and one retry keep every put whole."""
    nodes = await make_mesh(20, config=replace(FAST, rpc_timeout=1.0))
    keys = [new_key() for _ in range(50)]
    started = time.monotonic()
    results = await asyncio.gather(
        *(nodes[i % 20].put(key, Value(new_value_id(), os.urandom(100))) for i, key in enumerate(keys))
    )
    elapsed = time.monotonic() - started
    assert all(result.replicas == result.asked == 19 for result in results), [r.replicas for r in results]
    assert counter(nodes, "rpc_timeouts") == 0
    assert all(sum(1 for node in nodes if node.store.get(key)) == 20 for key in keys)
    assert elapsed < 10


async def test_F17_a_key_with_hundreds_of_values_returns_them_all(make_mesh: MeshFactory) -> None:
    """F17 "a reply over 65,507 B is dropped: 70 values × 1,000 B returned 0 values": find replies are
    paged (8 values a page, small ones inline, big ones as references fetched once), so 200 small values and
    a few big ones all come back, and no datagram exceeds 1,400 B."""
    nodes = await make_mesh(4)
    key = new_key()
    small = [Value(new_value_id(), b"small %d" % index) for index in range(200)]
    big = [nodes[0].sign(key, Value(new_value_id(), os.urandom(20_000))) for _ in range(3)]
    for batch in range(0, len(small), 25):
        await asyncio.gather(*(nodes[0].put(key, value) for value in small[batch : batch + 25]))
    for value in big:
        await nodes[0].put(key, value)
    reader = nodes[3]
    assert len(reader.store.get(key)) == 203
    reader.store.expire(now=time.time() + FOREVER)  # everything must come over the wire
    with watch_datagrams(nodes) as sent:
        values = await asyncio.wait_for(reader.get(key), 20)
    assert sorted(v.data for v in values) == sorted(v.data for v in small + big)
    assert max(len(datagram) for _, datagram in sent) <= codec.MAX_DATAGRAM
    pages = [codec.decode(d).body for _, d in sent if rpc_name(d) == "dm_find"]
    assert any(isinstance(body[1][1].get("p"), int) and body[1][1]["p"] > 0 for body in pages)


# ---- F18, F19, F20: cancellation, expiry, merging -------------------------------------------------


async def test_F18_cancelling_a_get_leaves_nothing_pending(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer], loop_errors: list[dict]
) -> None:
    """F18 "cancelling get() leaves cancelled futures in _outstanding, and InvalidStateError fires at the
    timeout": every call removes its pending entry and slot in `finally`, and a late reply is only counted."""
    nodes = await make_mesh(3)
    reader = nodes[0]
    key = new_key()
    value = Value(new_value_id(), b"wait for it")
    await nodes[1].put(key, value)
    reader.store.expire(now=time.time() + FOREVER)
    silent, late = raw_peer(), raw_peer()
    silent.serve(lambda name, args: [])  # a black hole
    late.serve(lambda name, args: [])  # answers, but only after the get was cancelled (below)
    await admit_raw([reader], flip_last_bit(key), silent)
    await admit_raw([reader], key[:-1] + bytes((key[-1] ^ 2,)), late)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.get(key), 0.1)
    assert reader.endpoint._pending == {}
    assert reader.endpoint._slots._value == reader.config.max_in_flight
    # The late peer now answers the request it got: the reply finds no pending call and is only counted.
    await eventually(lambda: any(name == "dm_find" for name, _ in late.requests))
    unexpected = reader.counters.get("unexpected_responses")
    message_ids = [codec.decode(d).message_id for d in late.inbox if rpc_name(d) == "dm_find"]
    for message_id in message_ids:
        late.sock.sendto(codec.encode(codec.RESPONSE, message_id, {"ok": {"nodes": []}}), reader.address)
    await eventually(lambda: reader.counters.get("unexpected_responses") >= unexpected + len(message_ids))
    await asyncio.sleep(2 * reader.config.rpc_timeout + 0.2)  # past the would-be timeouts
    assert loop_errors == []
    assert reader.endpoint._pending == {}
    assert await asyncio.wait_for(reader.get(key), 10) == [value]
    assert reader.endpoint._pending == {}


async def test_F19_plain_values_expire_and_only_permanent_puts_are_reannounced(make_mesh: MeshFactory) -> None:
    """F19 "every node republishes every stored key every hour, so the TTL never expires": values expire
    on every replica, replicas never refresh others' values, and only a permanent put is re-announced, by
    the node that made it, and only when it is close to expiring."""
    nodes = await make_mesh(3)
    publisher = nodes[0]
    key = new_key()
    plain = Value(new_value_id(), b"ten minutes")
    kept = Value(new_value_id(), b"permanent")
    await publisher.put(key, plain)
    await publisher.put(key, kept, permanent=True)
    assert await publisher.replicator.republish_due() == 0  # just stored: nothing is due yet
    assert all(len(node.store.get(key)) == 2 for node in nodes)
    expires_before = nodes[1].store.remaining_ttl(key, plain)
    for node in nodes[1:]:
        await node.replicator.repair()  # replicas re-send what others lack, without extending lifetimes
    assert nodes[1].store.remaining_ttl(key, plain) <= expires_before
    later = time.time() + 601
    for node in nodes:
        removed = node.store.expire(now=later)
        assert {value.data for _, value in removed} == {b"ten minutes", b"permanent"}
        assert node.store.get(key) == []
    # The publisher's duty: with the whole lifetime inside the margin, every permanent put is due now.
    publisher.config = replace(publisher.config, republish_margin=1.0)
    assert await publisher.replicator.republish_due() == 1
    for node in nodes:
        assert node.store.get(key) == [kept]
    assert publisher.cancel_put(key, kept.id)
    assert await publisher.replicator.republish_due() == 0
    assert counter(nodes[1:], "republished") == 0


async def test_F20_get_merges_all_replicas_and_the_newest_seq_wins(make_mesh: MeshFactory) -> None:
    """F20 "get() returns a local copy first; the crawler stops at the first round with a value and takes
    the majority": get asks all k closest and keeps the highest seq per (owner, id), so one up-to-date
    replica beats a stale majority and the reader's own stale copy."""
    nodes = await make_mesh(5)
    owner = Identity.generate()
    key = new_key()
    first = sign_value(owner, key, Value(11, b"seq 1", seq=1))
    second = sign_value(owner, key, Value(11, b"seq 2", seq=2))
    assert (await nodes[0].put(key, first)).replicas == 4
    by_distance = sorted(nodes, key=lambda n: distance(n.node_id, key))
    reader, sender, farthest = by_distance[0], by_distance[1], by_distance[-1]
    reply = await sender.endpoint.call(farthest.address, "dm_store", {"k": key, "v": second.to_wire(), "ttl": 600.0})
    assert reply.payload["stored"] is True
    assert [v.seq for node in nodes for v in node.store.get(key)].count(1) == 4  # a stale majority
    assert reader.store.get(key) == [first]  # the reader's own copy is stale too
    assert await reader.get(key) == [second]
    # A replay of the old version is refused where the new one is held.
    reply = await sender.endpoint.call(farthest.address, "dm_store", {"k": key, "v": first.to_wire(), "ttl": 600.0})
    assert reply.payload == {"stored": False, "why": "stale seq: a newer version is stored"}


# ---- F21, F22, F23: state files, NAT, asyncio hygiene ---------------------------------------------


class _Tripwire:
    """Unpickling this calls `Path.touch` on a marker file: proof that someone unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_F21_peers_are_saved_as_json_and_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    """F21 "load_state uses pickle.load": saved peers are JSON; a pickle (or any damage) in the peer file
    is ignored, never executed; no module of dhtmesh imports pickle."""
    book = PeerBook(tmp_path / "peers.json")
    contacts = [Contact(os.urandom(20), LOCALHOST, 4000 + i) for i in range(3)]
    book.save(contacts)
    document = json.loads(book.path.read_text())
    assert document == {"peers": [{"id": c.node_id.hex(), "host": c.host, "port": c.port} for c in contacts]}
    assert book.load() == [c.address for c in contacts]
    marker = tmp_path / "unpickled"
    for damage in (
        pickle.dumps(_Tripwire(marker)),
        b"{not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"peers": [{"host": 5, "port": "x"}, "junk", {"host": "h"}]}',
        b'{"peers": {"host": "h", "port": 1}}',
    ):
        book.path.write_bytes(damage)
        assert book.load() == []
    assert not marker.exists()
    sources = own_sources(Path(dhtmesh.__file__).parent)
    assert len(sources) > 20
    assert not [p for p in sources if "import pickle" in p.read_text() or "pickle.load" in p.read_text()]


async def test_F22_nat_traversal_is_out_of_scope_but_a_node_reports_the_observed_address(
    make_mesh: MeshFactory, raw_peer: Callable[[], RawPeer]
) -> None:
    """F22 "no NAT traversal; the address is whatever the UDP source says": dhtmesh does not traverse NAT
    either (nodes must be reachable, as the maintainer advises); what it offers is the stock-compatible
    `stun` and a `you` field in dm_hello, both the address the node observed."""
    nodes = await make_mesh(2)
    peer = raw_peer()
    observed, _ = await peer.call(nodes[0].address, "stun", [])
    assert tuple(observed) == peer.address
    hello, _ = await peer.call(nodes[0].address, "dm_hello", [os.urandom(20), {}])
    assert tuple(hello["ok"]["you"]) == peer.address
    reply = await nodes[1].endpoint.call(nodes[0].address, "dm_hello", {})
    assert tuple(reply.payload["you"]) == nodes[1].address


async def test_F23_a_stopped_mesh_leaves_no_tasks_and_no_warnings(loop_errors: list[dict]) -> None:
    """F23 "fire-and-forget ensure_future without keeping references": every background task is owned (a
    TaskSet or a keeper) and cancelled and awaited on stop, so nothing is left running and nothing warns."""
    current = asyncio.current_task()
    baseline = asyncio.all_tasks() - {current}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nodes = [await start_node() for _ in range(4)]
        for node in nodes[1:]:
            await node.join([nodes[0].address])
        key = new_key()
        listener = nodes[3].listen(key)
        await eventually(lambda: subscribed(nodes[3], key, nodes))
        await nodes[0].put(key, nodes[0].sign(key, Value(1, b"one")))
        event = await asyncio.wait_for(listener.next(), 5)
        assert event.value.data == b"one"
        await nodes[1].put(key, nodes[1].sign(key, Value(2, os.urandom(5000))))
        await nodes[2].get(key)
        listener.close()
        assert len(asyncio.all_tasks() - baseline - {current}) > 0  # background duties were running
        for node in nodes:
            await node.stop()
        await asyncio.sleep(0)
        leftover = asyncio.all_tasks() - baseline - {current}
        assert leftover == set(), leftover
        del listener, event
        gc.collect()
        await asyncio.sleep(0)
    assert loop_errors == []
    relevant = [w for w in caught if issubclass(w.category, RuntimeWarning | DeprecationWarning | ResourceWarning)]
    assert relevant == [], [str(w.message) for w in relevant]
    assert fire_and_forget_calls() == []


def own_sources(package: Path) -> list[Path]:
    """dhtmesh's own modules: not the tests, nor a virtualenv, cache or build output that an editable
    checkout holds (`scripts/test` and `scripts/bench` make `.venv` at the repository root, which is the
    package, and `build/` for the dataserv anchor's venv)."""
    return sorted(
        path
        for path in package.rglob("*.py")
        if not any(part in ("tests", "build") or part.startswith(".") for part in path.relative_to(package).parts)
    )


def fire_and_forget_calls(package: Path | None = None) -> list[str]:
    """`create_task(...)`/`ensure_future(...)` calls whose task is dropped on the floor, and uses of the
    deprecated `asyncio.iscoroutinefunction`, anywhere in dhtmesh's own source (or `package`)."""
    package = package or Path(dhtmesh.__file__).parent
    found = []
    for source in own_sources(package):
        tree = ast.parse(source.read_text())
        task_groups = {  # `async with asyncio.TaskGroup() as group`: group.create_task(...) is owned
            item.optional_vars.id
            for node in ast.walk(tree)
            if isinstance(node, ast.With | ast.AsyncWith)
            for item in node.items
            if isinstance(item.optional_vars, ast.Name) and _called_name(item.context_expr) == "TaskGroup"
        }
        for node in ast.walk(tree):
            where = f"{source.relative_to(package)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Expr) and _called_name(node.value) in ("create_task", "ensure_future"):
                receiver = getattr(node.value.func, "value", None)  # type: ignore[attr-defined]
                if not (isinstance(receiver, ast.Name) and receiver.id in task_groups):
                    found.append(where)
            if isinstance(node, ast.Attribute) and node.attr == "iscoroutinefunction":
                found.append(where)
    return found


def _called_name(node: ast.AST) -> str:
    if not isinstance(node, ast.Call):
        return ""
    function = node.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")


def test_F23_the_static_check_finds_a_fire_and_forget_call(tmp_path: Path) -> None:
    """F23 (control for the check above): in a package shaped like dhtmesh, exactly the dropped
    `ensure_future`/`create_task` calls and `asyncio.iscoroutinefunction` are reported."""
    package = tmp_path / "fake"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text(
        "import asyncio\n"
        "async def f(loop):\n"
        "    asyncio.ensure_future(g())\n"  # line 3: dropped
        "    kept = asyncio.ensure_future(g())\n"
        "    loop.create_task(g())\n"  # line 5: dropped
        "    async with asyncio.TaskGroup() as group:\n"
        "        group.create_task(g())\n"
        "    return asyncio.iscoroutinefunction(f), kept\n"  # line 8
    )
    assert fire_and_forget_calls(package) == ["bad.py:3", "bad.py:5", "bad.py:8"]
