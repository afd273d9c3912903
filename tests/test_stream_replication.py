"""Streams replicated across a mesh of five in-process nodes (real UDP and TCP sockets, real SQLite; the
in-process tests are `unit`, the last one starts a `dhtmesh run` process): a
stream made through one node, written through another, read through a third; appends through two nodes
at once; a home cut off mid-stream (its sockets closed, no goodbye) loses no acknowledged entry and the
stream goes on once another home takes over; the old primary, back, commits nothing; replica ops from
nodes that are not the stream's homes, or not authenticated, and bad frames are refused and counted."""

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgpack
import pytest

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.services import Services
from dhtmesh.node.stats import Counters
from dhtmesh.node.streams import feeds, ids
from dhtmesh.node.streams.errors import StreamError
from dhtmesh.node.streams.home import NotPrimary
from dhtmesh.node.streams.links import Links
from dhtmesh.node.streams.service import Streams
from dhtmesh.node.streams.wire import HELLO, HELLO_METHOD, HELLO_PATH, read_frame
from dhtmesh.node.transfer.framing import frame
from dhtmesh.testing import NodeProcess
from dhtmesh.testing.waiting import eventually

from support import stream_services

TOKEN = "alice's token"
NODES = 5


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[list[Services]]:
    async with stream_services(NODES, {TOKEN: "alice"}, root=tmp_path, persist=True) as started:
        yield started


async def homes_of(mesh: list[Services], sid: str) -> tuple[list[Services], list[Services]]:
    """The stream's homes (primary first) and the other nodes."""
    record = await mesh[0].streams.book.find(sid)
    assert record is not None
    by_id = {services.node.node_id: services for services in mesh}
    homes = [by_id[home[0]] for home in record.homes]
    return homes, [services for services in mesh if services not in homes]


async def cut_off(services: Services) -> None:
    """The node's sockets closed without a goodbye, as when its process is killed."""
    await services.port.stop()
    await services.streams.links.close()
    if services.node.transport is not None:
        services.node.transport.close()


async def test_a_stream_made_through_one_node_is_written_through_another_and_read_through_a_third(
    mesh: list[Services],
) -> None:
    assert await mesh[0].streams.create(TOKEN, "chat", {"max_len": 1000}) == {"max_len": 1000}
    homes, _ = await homes_of(mesh, "chat")
    assert len(homes) == 3
    written = await mesh[1].streams.append(TOKEN, "chat", [(b"hello", None), (b"world", None)])
    read = await mesh[3].streams.read(TOKEN, {"chat": "0"}, 10)
    assert [(e.id, e.data) for e in read] == list(zip(written, [b"hello", b"world"], strict=True))
    assert await mesh[3].streams.read(TOKEN, {"chat": written[-1]}, 10) == []  # resumes after its last id
    waiting = asyncio.ensure_future(mesh[3].streams.read(TOKEN, {"chat": "$"}, 10, timeout=10.0))
    await asyncio.sleep(0.2)
    (later,) = await mesh[4].streams.append(TOKEN, "chat", [(b"later", None)])
    assert [(e.id, e.data) for e in await waiting] == [(later, b"later")]
    assert await mesh[2].streams.read(TOKEN, {"chat": "$"}, 10, timeout=0.2) == []
    info = await mesh[2].streams.info(TOKEN, "chat")
    assert (info.length, info.last_generated_id, info.meta) == (3, later, {"max_len": 1000})
    assert info.homes == [home.node.node_id.hex() for home in homes]
    assert await mesh[4].streams.names(TOKEN) == ["chat"]
    for home in homes:  # every home holds every entry
        assert home.streams.homes.log.state("chat").length == 3  # type: ignore[union-attr]


async def test_readers_waiting_on_one_node_share_one_feed_and_a_reader_moving_between_nodes_resumes(
    mesh: list[Services],
) -> None:
    await mesh[0].streams.create(TOKEN, "feed", {})
    readers = [mesh[3].streams.read(TOKEN, {"feed": "$"}, 10, timeout=10.0) for _ in range(10)]
    waiting = asyncio.gather(*readers)
    await asyncio.sleep(0.3)
    written = await mesh[1].streams.append(TOKEN, "feed", [(b"one", None), (b"two", None)])
    assert all([e.id for e in got] == written for got in await waiting)
    assert len(mesh[3].streams.feeds) == 1
    cursor, seen = "0", []
    for turn in range(6):  # the reader moves from node to node, its last id as its cursor
        await mesh[turn % 2 + 1].streams.append(TOKEN, "feed", [(b"%d" % turn, None)])
        got = await mesh[turn % NODES].streams.read(TOKEN, {"feed": cursor}, 2, timeout=5.0)
        seen += [e.id for e in got]
        cursor = got[-1].id
    rest = await mesh[4].streams.read(TOKEN, {"feed": cursor}, 100)
    assert sum(services.node.counters.get("stream_follows") for services in mesh) <= NODES  # one per feed
    everything = await mesh[2].streams.read(TOKEN, {"feed": "0"}, 100)
    assert seen + [e.id for e in rest] == [e.id for e in everything]


async def test_entries_appended_through_two_nodes_at_once_have_strictly_increasing_ids(mesh: list[Services]) -> None:
    async def write(streams: Streams, tag: bytes) -> list[str]:
        written = []
        for i in range(20):
            written += await streams.append(TOKEN, "both", [(tag + b"%d" % i, None), (tag + b"%d'" % i, None)])
        return written

    first, second = await asyncio.gather(write(mesh[1].streams, b"a"), write(mesh[2].streams, b"b"))
    for written in (first, second):
        assert [ids.parse(i) for i in written] == sorted(ids.parse(i) for i in written)
    read = await mesh[4].streams.read(TOKEN, {"both": "0"}, 1000)
    assert [e.id for e in read] == sorted(first + second, key=ids.parse)
    assert len({e.id for e in read}) == 80


async def test_a_home_cut_off_mid_stream_loses_no_acknowledged_entry_and_its_old_primary_commits_nothing(
    mesh: list[Services],
) -> None:
    await mesh[0].streams.create(TOKEN, "log", {})
    homes, others = await homes_of(mesh, "log")
    writer, reader = others
    acknowledged: list[str] = []
    refused = 0
    for i in range(30):
        if i == 10:
            await cut_off(homes[0])
        try:
            acknowledged += await writer.streams.append(TOKEN, "log", [(b"%d" % i, None)] * 5)
        except StreamError:
            refused += 1  # while the other homes take over
    assert refused <= 3 and len(acknowledged) >= 135
    read = await reader.streams.read(TOKEN, {"log": "0"}, 1000)
    assert set(acknowledged) <= {e.id for e in read}
    assert [ids.parse(e.id) for e in read] == sorted(ids.parse(e.id) for e in read)

    old = homes[0].streams  # back, still taking itself for the primary of its term
    record = await old.book.find("log")
    assert record is not None
    with pytest.raises(NotPrimary):  # the other homes promised a later term: it learns it is deposed
        await old.homes.append(record, [], [(b"from the deposed primary", None)])
    assert (
        homes[1].node.counters.get("stream_replica_stale_terms")
        + homes[2].node.counters.get("stream_replica_stale_terms")
        >= 1
    )
    after = await reader.streams.read(TOKEN, {"log": "0"}, 1000)
    assert b"from the deposed primary" not in {e.data for e in after}
    more = await writer.streams.append(TOKEN, "log", [(b"after", None)])
    assert ids.parse(more[0]) > ids.parse(after[-1].id)

    host, port = homes[0].node.address[:2]
    await homes[0].port.start(host, port)  # its port back: the new primary brings it up to date
    state = old.homes.log.state("log")
    assert state is not None
    await eventually(lambda: state.last == ids.parse(more[0]))
    held = [row[2] for row in old.homes.log.rows_after("log", ids.ZERO, 1000)]
    assert b"from the deposed primary" not in held and len(held) == len(after) + 1

    # As if restarted (its term on disk, nothing in memory): asked first (it is the first home), it does
    # not take the stream from the live primary (which failed that primary's writers): the homes name
    # the primary they follow, and the caller is sent there.
    old.homes._leading.clear(), old.homes._primary.clear(), old.homes._heard.clear()
    homes[2].streams.homes._heard.clear()  # and the stream idle: the follower asks the primary it follows
    deposed = homes[1].node.counters.get("stream_primary_deposed")
    with pytest.raises(NotPrimary) as sent:
        await old.homes.append(record, [], [(b"through the first home", None)])
    assert sent.value.primary == 1 and old.node.counters.get("stream_prevotes_refused") == 1
    assert homes[1].streams.homes._leading.get("log") is not None
    assert await old.append(TOKEN, "log", [(b"through the first home", None)])
    assert homes[1].node.counters.get("stream_primary_deposed") == deposed


async def test_a_home_that_was_away_catches_up_and_groups_survive_the_primary(mesh: list[Services]) -> None:
    await mesh[0].streams.create(TOKEN, "away", {"max_len": 500})
    homes, (writer, reader) = await homes_of(mesh, "away")
    await writer.streams.append(TOKEN, "away", [(b"before", None)])
    follower = homes[2]
    await follower.port.stop()  # away: its port closed, its connections cut
    await follower.streams.links.close()
    written = []
    for i in range(20):
        written += await writer.streams.append(TOKEN, "away", [(b"%d" % i, None)] * 10)
    delivered = await reader.streams.group_read(TOKEN, "away", "g", "c1", 5, 0)
    host, port = follower.node.address[:2]
    await follower.port.start(host, port)  # back
    written += await writer.streams.append(TOKEN, "away", [(b"after", None)])
    state = follower.streams.homes.log.state("away")
    assert state is not None
    await eventually(lambda: state.length == 202 and state.last == ids.parse(written[-1]))
    assert state.meta == {"max_len": 500}

    await cut_off(homes[0])  # the primary goes: the group's state was on a majority of homes
    redelivered = await reader.streams.group_read(TOKEN, "away", "g", "c2", 5, 0, ack_wait=0.0)
    assert [e.id for e in redelivered] == [e.id for e in delivered]  # at least once, across the failover
    assert await reader.streams.group_ack(TOKEN, "away", "g", [e.id for e in redelivered]) == 5
    fresh = await reader.streams.group_read(TOKEN, "away", "g", "c2", 5, 0)
    assert [e.id for e in fresh] == written[4:9]


async def _connect(services: Services) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = services.node.address[:2]
    return await asyncio.open_connection(host, port)


async def test_replica_ops_from_a_node_that_is_not_a_home_or_not_authenticated_are_refused(
    mesh: list[Services],
) -> None:
    await mesh[0].streams.create(TOKEN, "guarded", {})
    homes, others = await homes_of(mesh, "guarded")
    stranger = others[0].streams.links
    append = {"sid": "guarded", "term": 99, "prev": [0, 0, 0], "rows": [[1, 0, 99, b"forged"]], "commit": [1, 0]}
    home = (homes[1].node.node_id, *homes[1].node.address[:2])
    answer = await stranger.request(home, "r.append", append)
    assert answer["err"] == "bad" and "homes only" in answer["msg"]
    assert homes[1].node.counters.get("stream_replica_not_home") >= 1

    reader, writer = await _connect(homes[1])  # no hello: refused
    writer.write(frame({"op": "r.append", "rid": 1}, msgpack.packb(append)))
    _, body = await read_frame(reader)
    assert body["err"] == "bad"
    writer.close()
    reader, writer = await _connect(homes[1])  # a hello signed for another node: refused
    auth = sign_request(Identity.generate(), HELLO_METHOD, HELLO_PATH, b"", homes[2].node.node_id)
    writer.write(frame({"op": HELLO, "rid": 0, "auth": auth}))
    _, body = await read_frame(reader)
    assert body["err"] == "bad" and "signature" in body["msg"]
    writer.close()
    counters = homes[1].node.counters
    assert counters.get("stream_port_no_hello") == 1 and counters.get("stream_port_bad_signatures") == 1
    assert (await mesh[0].streams.read(TOKEN, {"guarded": "0"}, 10)) == []


@pytest.mark.parametrize(
    "args",
    [{}, {"term": "high"}, {"term": -1}, {"term": 2**64 - 1}, {"term": None, "record": b"junk"}],
    ids=["no-term", "text-term", "negative-term", "huge-term", "junk-record"],
)
async def test_a_prevote_changes_nothing_refuses_garbage_and_is_for_homes_only(
    mesh: list[Services], args: dict
) -> None:
    await mesh[0].streams.create(TOKEN, "asked", {})
    await mesh[0].streams.append(TOKEN, "asked", [(b"one", None)])
    homes, others = await homes_of(mesh, "asked")
    follower = homes[2].streams.homes.log.state("asked")
    assert follower is not None
    term = follower.term
    asked = (homes[2].node.node_id, *homes[2].node.address[:2])
    from_stranger = await others[0].streams.links.request(asked, "r.prevote", {"sid": "asked", "term": term + 1})
    assert from_stranger["err"] == "bad" and "homes only" in from_stranger["msg"]
    garbage = await homes[1].streams.links.request(asked, "r.prevote", {"sid": "asked", **args})
    assert "ok" not in garbage  # refused (a stale answer or an error), never a promise
    # A well-formed prevote from a home, the primary alive and just heard: refused, naming the primary.
    answer = await homes[1].streams.links.request(asked, "r.prevote", {"sid": "asked", "term": term + 1})
    assert answer == {"err": "stale", "term": term, "primary": 0}
    assert follower.term == term and homes[0].streams.homes._leading.get("asked") is not None  # nothing changed
    assert [e.data for e in await others[0].streams.read(TOKEN, {"asked": "0"}, 10)] == [b"one"]


async def test_a_bad_frame_is_answered_with_an_error_and_counted(mesh: list[Services]) -> None:
    reader, writer = await _connect(mesh[1])
    writer.write(struct.pack(">I", 1 << 20) + b"x" * 100)  # a header over the bound
    header, _ = await read_frame(reader)
    assert "header is at most" in header["err"]
    writer.close()
    assert mesh[1].node.counters.get("chunk_port_bad_frames") == 1

    reader, writer = await _connect(mesh[1])  # after a good hello, a body that is not msgpack
    auth = sign_request(Identity.generate(), HELLO_METHOD, HELLO_PATH, b"", mesh[1].node.node_id)
    writer.write(frame({"op": HELLO, "rid": 0, "auth": auth}))
    _, body = await read_frame(reader)
    assert "ok" in body
    writer.write(frame({"op": "s.read", "rid": 1}, b"\xc1\xc1\xc1"))
    _, body = await read_frame(reader)
    assert body["err"] == "bad"
    writer.close()
    assert mesh[1].node.counters.get("stream_port_bad_frames") == 1
    assert await mesh[1].streams.append(TOKEN, "still", [(b"serving", None)])  # and the node serves on


@pytest.mark.process
async def test_a_dhtmesh_run_node_serves_stream_replicas_on_its_udp_port_number(
    spawn: Callable[..., NodeProcess],
) -> None:
    """Every node listens on TCP at its UDP port (not only farmers), so a stream's home is reached from
    its contact alone; a stranger's replica op is answered with a refusal."""
    node = spawn("plain")
    host, port = node.address
    links = Links(Identity.generate(), Counters())
    try:
        answer = await links.request((bytes.fromhex(node.node_id), host, port), "r.position", {"sid": "nothing"})
    finally:
        await links.close()
    assert answer["err"] in ("unknown", "bad")


async def test_a_feed_follows_its_primary_with_one_request_and_stops_it_once_idle(
    mesh: list[Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    await mesh[0].streams.create(TOKEN, "followed", {})
    homes, others = await homes_of(mesh, "followed")
    reader, primary = others[0], homes[0]
    cursor, seen = "$", []
    for turn in range(20):  # each entry read by a reader waiting on the feed of a node that is no home
        reading = asyncio.ensure_future(reader.streams.read(TOKEN, {"followed": cursor}, 10, timeout=10.0))
        await asyncio.sleep(0.05)
        await mesh[turn % NODES].streams.append(TOKEN, "followed", [(b"%d" % turn, None)])
        got = await reading
        seen += [entry.data for entry in got]
        cursor = got[-1].id
    assert seen == [b"%d" % turn for turn in range(20)]
    assert primary.node.counters.get("stream_follows") == 1  # not a request per entry, as a long poll made
    # Unread for IDLE, the feed ends with the next answer (a round waits FOLLOW_WAIT at most), and unfollows.
    monkeypatch.setattr(feeds, "IDLE", 1.0)
    await mesh[1].streams.append(TOKEN, "followed", [(b"unread", None)])
    await asyncio.sleep(1.2)
    await mesh[1].streams.append(TOKEN, "followed", [(b"unread too", None)])

    def unfollowed() -> bool:
        return len(reader.streams.feeds) == 0 and primary.streams.replica._follows.in_use == 0

    await eventually(unfollowed, within=10.0)


async def test_feeds_keep_their_share_of_the_nodes_cache_and_readers_behind_it_read_the_primary(
    mesh: list[Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feeds, "CACHED_BYTES", 8 * 1024)  # 8 KiB for all feeds: eight 1 KiB entries
    await mesh[0].streams.create(TOKEN, "cached", {})
    _, others = await homes_of(mesh, "cached")
    reader = others[0]
    waiting = asyncio.ensure_future(reader.streams.read(TOKEN, {"cached": "$"}, 100, timeout=10.0))
    await asyncio.sleep(0.2)
    written = []
    for turn in range(5):
        written += await mesh[1].streams.append(TOKEN, "cached", [(bytes([turn]) * 1024, None)] * 10)
    assert (await waiting)[0].id == written[0]
    await eventually(lambda: reader.streams.feeds._feeds["cached"].cursor == ids.parse(written[-1]))
    assert reader.streams.feeds._feeds["cached"].size <= 8 * 1024
    got = await reader.streams.read(TOKEN, {"cached": written[0]}, 100, timeout=5.0)  # behind the cache
    assert [entry.id for entry in got] == written[1:]
