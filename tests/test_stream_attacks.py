"""Attacks on the data streams (issue 17), each against real in-process nodes (real TCP and UDP sockets,
real SQLite). On the streams' TCP port, from a hostile node of the attacker's own: requests pipelined and
their answers never read (the node buffered them all), one host's long reads filling the primary's
node-wide cap on waiting reads (honest long polls then returned empty at once), a hello stating a body it
never sends (the connection was held for ever, unauthenticated), user ops without a valid token, a user
op naming the live primary down (any account holder deposed it at will). Through the streams'
interface, as a user with a throwaway account: the largest entry id (it used a stream's ids up: every
later append failed), odd group and consumer names, extreme counts and waits, one group too many,
another account's stream deleted (ptg's model, kept). From a hostile node's DHT side: a backdated stream
record naming its own homes, a name squatted with a record nobody can use (its creator got the DHT's
PutRefused, an internal error). The attacks the other stream tests make already (no hello, a hello
signed for another node, replica ops from a non-home, bad frames and bodies: test_stream_replication;
bad WebSocket frames, tokens and ids, socket caps: test_stream_sockets, test_streams) are not repeated."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

import pytest

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.records.stream import KIND, StreamRecord, stream_id
from dhtmesh.node.services import Services
from dhtmesh.node.signing import PutRefused
from dhtmesh.node.streams import ids
from dhtmesh.node.streams.errors import BadStreamRequest, UnknownStream
from dhtmesh.node.streams.replica import (
    BIG_BODIES_PER_HOST,
    MAX_FOLLOWS_PER_HOST,
    MAX_IN_FLIGHT,
    MAX_WAITING_PER_HOST,
)
from dhtmesh.node.streams.wire import FOLLOW, HELLO, HELLO_METHOD, HELLO_PATH, UNFOLLOW, read_frame, request
from dhtmesh.node.transfer.framing import announce, frame
from dhtmesh.node.transfer.port_limits import HEADER_TIMEOUT
from dhtmesh.testing.meshes import FAST
from dhtmesh.testing.waiting import eventually

from support import Tokens, stream_services

pytestmark = pytest.mark.unit
TOKEN = "mallory's token"
LONG_OP = "r." + "x" * 3900  # an unknown op is echoed in its refusal: ~4 KiB answered per request
PIPELINED = 4096  # ~16 MiB of answers: well above what the kernel's socket buffers take


def _started(count: int, config: NodeConfig = FAST) -> AbstractAsyncContextManager[list[Services]]:
    """`count` joined in-process nodes with their services, whose accounts take `TOKEN`; stopped after."""
    return stream_services(count, {TOKEN: "mallory"}, config)


@pytest.fixture
async def node() -> AsyncIterator[Services]:
    async with _started(1) as (services,):
        yield services


@pytest.fixture
async def mesh() -> AsyncIterator[list[Services]]:
    async with _started(4) as started:
        yield started


async def _hostile_link(services: Services) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from a node of the attacker's own (any identity passes the hello), which reads
    almost nothing: its receive buffer is as small as the kernel allows."""
    host, port = services.node.address[:2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    auth = sign_request(Identity.generate(), HELLO_METHOD, HELLO_PATH, b"", services.node.node_id)
    writer.write(frame({"op": HELLO, "rid": 0, "auth": auth}))
    _, body = await read_frame(reader)
    assert "ok" in body
    return reader, writer


def _buffered(services: Services) -> int:
    """The bytes the node's port holds for its peers, not yet taken by their sockets."""
    return max((w.transport.get_write_buffer_size() for w in services.port._open), default=0)


async def test_pipelined_requests_whose_answers_are_never_read_do_not_fill_the_nodes_memory(
    node: Services,
) -> None:
    _, writer = await _hostile_link(node)
    writer.write(b"".join(request(LONG_OP, rid, {}) for rid in range(1, PIPELINED + 1)))
    most = 0
    for _ in range(30):  # the node reads on only as fast as the attacker takes its answers
        await asyncio.sleep(0.1)
        most = max(most, _buffered(node))
    assert most < 1024 * 1024, f"the node buffered {most} bytes of answers nobody reads"
    assert node.node.counters.get("stream_port_unknown_ops") < PIPELINED  # it stopped reading
    writer.close()
    assert await node.streams.append(TOKEN, "honest", [(b"still served", None)])


async def test_the_largest_entry_id_cannot_use_up_a_streams_ids(node: Services) -> None:
    await node.streams.append(TOKEN, "s", [(b"first", None)])
    for last in (f"{ids.MAX_PART}-{ids.MAX_PART}", f"{ids.MAX_PART}", f"{ids.MAX_EXPLICIT_MS + 1}-0"):
        with pytest.raises(BadStreamRequest, match="at most"):
            await node.streams.append(TOKEN, "s", [(b"the end", last)])
    far = f"{ids.MAX_EXPLICIT_MS}-{ids.MAX_PART}"  # the highest id a writer may name: ids go on after it
    assert await node.streams.append(TOKEN, "s", [(b"far", far)]) == [far]
    after = await node.streams.append(TOKEN, "s", [(b"next", None), (b"and next", None)])
    assert after == [f"{ids.MAX_EXPLICIT_MS + 1}-0", f"{ids.MAX_EXPLICIT_MS + 1}-1"]
    assert node.node.counters.get("stream_port_internal_errors") == 0


async def test_a_backdated_record_naming_the_attackers_homes_does_not_take_over_a_stream(
    mesh: list[Services],
) -> None:
    honest, attacker, newcomer = mesh[0], mesh[3], mesh[1]
    await honest.streams.append(TOKEN, "cam", [(b"frame", None)])
    mine = (attacker.node.node_id, *attacker.node.address[:2])
    forged = StreamRecord("cam", attacker.node.node_id, (mine,), 0)  # "made" in 1970: the earliest
    with pytest.raises(PutRefused, match="another owner"):  # the record's value id is the honest creator's
        await attacker.node.put(KIND.key_for(forged), KIND.sign(attacker.node.identity, forged, 1), permanent=True)
    newcomer.streams.book._known.clear()  # a node that has not looked the stream up yet
    record = await newcomer.streams.book.find("cam")
    assert record is not None and record.creator == honest.node.node_id
    assert [e.data for e in await newcomer.streams.read(TOKEN, {"cam": "0"}, 10)] == [b"frame"]


async def test_one_hosts_waiting_reads_do_not_starve_honest_readers(node: Services) -> None:
    await node.streams.append(TOKEN, "bait", [(b"bait", None)])
    await node.streams.append(TOKEN, "honest", [(b"before", None)])
    links = [await _hostile_link(node) for _ in range(4)]
    wait = {"sid": "bait", "token": TOKEN, "after": "$", "count": 1, "wait": 300.0, "down": [], "record": None}
    for connection, (_, writer) in enumerate(links):
        writer.write(b"".join(request("s.read", 256 * connection + i, wait) for i in range(256)))
    await eventually(lambda: node.node.counters.get("stream_port_waits_over_cap") >= 1024 - MAX_WAITING_PER_HOST)
    assert node.streams.homes._waiting == MAX_WAITING_PER_HOST  # the rest were answered at once
    reading = asyncio.ensure_future(node.streams.read(TOKEN, {"honest": "$"}, 10, timeout=10.0))
    await asyncio.sleep(0.5)
    await node.streams.append(TOKEN, "honest", [(b"after", None)])
    assert [entry.data for entry in await reading] == [b"after"]
    assert node.node.counters.get("stream_readers_over_cap") <= 2  # one refused poll, not a loop of them
    for _, writer in links:
        writer.close()


async def test_odd_group_names_extreme_counts_and_waits_and_many_groups_are_bounded(node: Services) -> None:
    streams = node.streams
    await streams.append(TOKEN, "g", [(b"one", None)])
    for group, consumer in (("", "c"), ("g" * 201, "c"), ("g", ""), ("g", "c" * 201)):
        with pytest.raises(BadStreamRequest, match="name"):
            await streams.group_read(TOKEN, "g", group, consumer, 1, 0.0)
    for count in (0, -1, True, 1.5):
        with pytest.raises(BadStreamRequest, match="count"):
            await streams.read(TOKEN, {"g": "0"}, count)  # type: ignore[arg-type]
    read = await streams.read(TOKEN, {"g": "0"}, 10**18, timeout=float("inf"))  # capped, and no wait at all
    assert [entry.data for entry in read] == [b"one"]
    for number in range(64):
        await streams.group_read(TOKEN, "g", f"group-{number}", "c", 1, 0.0)
    with pytest.raises(BadStreamRequest, match="at most 64 groups"):
        await streams.group_read(TOKEN, "g", "one-too-many", "c", 1, 0.0)


async def test_any_account_deletes_any_stream_as_in_ptg(node: Services) -> None:
    """ptg's model, kept (the README says so): no per-stream scopes, so another account's DELETE works."""
    streams = node.streams
    streams.accounts = Tokens({TOKEN: "mallory", "alice's token": "alice"})  # type: ignore[assignment]
    await streams.create("alice's token", "alices", {})
    await streams.delete(TOKEN, "alices")
    with pytest.raises(UnknownStream):
        await streams.info("alice's token", "alices")


async def test_user_ops_over_tcp_without_a_valid_token_are_refused(node: Services) -> None:
    await node.streams.append(TOKEN, "t", [(b"one", None)])
    reader, writer = await _hostile_link(node)
    append = {"sid": "t", "entries": [[b"forged", None]], "down": [], "record": None}
    for rid, token in enumerate((None, 7, "forged", "x" * 10_000), start=1):
        writer.write(request("s.append", rid, {**append, **({} if token is None else {"token": token})}))
        _, body = await read_frame(reader)
        assert "err" in body and body["err"] != "ok"
    writer.close()
    assert [entry.data for entry in await node.streams.read(TOKEN, {"t": "0"}, 10)] == [b"one"]


async def test_a_hello_stating_a_body_it_never_sends_does_not_hold_a_connection(node: Services) -> None:
    host, port = node.node.address[:2]
    reader, writer = await asyncio.open_connection(host, port)
    auth = sign_request(Identity.generate(), HELLO_METHOD, HELLO_PATH, b"", node.node.node_id)
    writer.write(announce({"op": HELLO, "rid": 0, "auth": auth}, 16 * 1024 * 1024))  # and not one byte of it
    _, body = await asyncio.wait_for(read_frame(reader), HEADER_TIMEOUT + 5)  # before: no answer, ever
    assert body["err"] == "bad" and "no body" in body["msg"]
    assert await reader.read() == b""  # and closed
    writer.close()
    assert node.node.counters.get("stream_port_bad_hellos") == 1


async def test_a_squatted_name_with_implausible_homes_is_refused_as_a_bad_request() -> None:
    """Another node signed a stream's record first, naming a home far from the stream's id (k = 1 here,
    so that the node itself is closer than it). Nobody uses that record; a creator of the name is told the
    name is held (a StreamError, 400), not with the DHT's PutRefused, which no route expects."""
    async with _started(1, replace(FAST, k=1)) as (services,):
        node = services.node
        squatter = Identity.generate()
        far = bytes(byte ^ 0xFF for byte in stream_id("cam"))  # the farthest id there is: the node is closer
        squat = StreamRecord("cam", squatter.node_id, ((far, "127.0.0.1", 9),), int(time.time()) - 60)
        await node.put(KIND.key_for(squat), KIND.sign(squatter, squat, 1), permanent=True)
        with pytest.raises(BadStreamRequest, match="held"):
            await services.streams.append(TOKEN, "cam", [(b"frame", None)])
        assert node.counters.get("stream_records_implausible") >= 1
        assert await services.streams.append(TOKEN, "free", [(b"frame", None)])  # other names are served


async def test_a_user_op_naming_the_live_primary_down_does_not_depose_it(mesh: list[Services]) -> None:
    await mesh[0].streams.create(TOKEN, "churn", {})
    await mesh[0].streams.append(TOKEN, "churn", [(b"one", None)])
    record = await mesh[0].streams.book.find("churn")
    assert record is not None
    by_id = {services.node.node_id: services for services in mesh}
    primary, second = by_id[record.homes[0][0]], by_id[record.homes[1][0]]
    reader, writer = await _hostile_link(second)
    lie = {"sid": "churn", "token": TOKEN, "down": [primary.node.node_id], "record": None}
    writer.write(request("s.info", 1, lie))
    _, body = await read_frame(reader)
    writer.close()
    assert body.get("err") == "not_primary"  # it points back to the primary, which still serves
    assert primary.node.counters.get("stream_primary_deposed") == 0
    assert second.node.counters.get("stream_claims_refused_primary_alive") == 1


async def test_large_bodies_sent_slowly_from_many_connections_hold_a_few_slots_not_memory(node: Services) -> None:
    """Any identity passes the hello; then each connection announces a 16 MiB body and sends a byte of it.
    One host gets `BIG_BODIES_PER_HOST` such bodies under way; a further one is refused at once."""
    links = [await _hostile_link(node) for _ in range(BIG_BODIES_PER_HOST + 1)]
    try:
        for _, writer in links:
            writer.write(announce({"op": "s.append", "rid": 1}, 16 * 1024 * 1024) + b"x")
        await eventually(lambda: node.node.counters.get("stream_port_bodies_refused") == 1)
        assert node.node.counters.get("stream_port_bad_frames") == 1  # only that one: the others are read on
    finally:
        for _, writer in links:
            writer.close()


async def test_followed_reads_are_bounded_per_host_malformed_ones_refused_and_only_their_caller_unfollows(
    node: Services,
) -> None:
    await node.streams.append(TOKEN, "bait", [(b"bait", None)])
    reader, writer = await _hostile_link(node)
    follow = {"sid": "bait", "token": TOKEN, "after": "$", "down": [], "record": None}
    writer.write(request(FOLLOW, 9000, {**follow, "after": "not an id"}))
    header, body = await read_frame(reader)
    assert (header["rid"], body["err"]) == (9000, "bad")  # answered with an error; the connection serves on
    writer.write(b"".join(request(FOLLOW, rid, follow) for rid in range(1, MAX_FOLLOWS_PER_HOST + 11)))
    writer.write(request(UNFOLLOW, 9001, {"rid": 424242}))  # none of this connection's: nothing happens
    refusals = []
    for _ in range(10):
        header, body = await read_frame(reader)
        refusals.append(body.get("err"))
    assert refusals == ["unavailable"] * 10  # past its host's cap, a follow is refused at once
    assert following(node) == MAX_FOLLOWS_PER_HOST
    # A second connection of the attacker's cannot stop the first one's follows; the first one can.
    other_reader, other = await _hostile_link(node)
    other.write(b"".join(request(UNFOLLOW, 10_000 + rid, {"rid": rid}) for rid in range(1, 11)))
    await asyncio.sleep(0.3)
    assert following(node) == MAX_FOLLOWS_PER_HOST
    writer.write(b"".join(request(UNFOLLOW, 10_000 + rid, {"rid": rid}) for rid in range(1, 11)))
    await eventually(lambda: following(node) == MAX_FOLLOWS_PER_HOST - 10)
    # Follows stopped before they ran (pipelined with their unfollows) leave nothing held: it still serves.
    pairs = MAX_IN_FLIGHT + 44
    stopped = (request(FOLLOW, 20_000 + i, follow) + request(UNFOLLOW, 0, {"rid": 20_000 + i}) for i in range(pairs))
    other.write(b"".join(stopped))
    other.write(request("s.live", 30_000, follow))
    async with asyncio.timeout(10):
        while (await read_frame(other_reader))[0].get("rid") != 30_000:
            pass
    writer.close()
    other.close()
    await eventually(lambda: following(node) == 0)  # a connection gone takes its follows along
    assert node.streams.homes._waiting == 0  # follows are not waiting reads: those stay for long polls


def following(services: Services) -> int:
    """The followed reads the node serves for other nodes."""
    return services.streams.replica._follows.in_use
