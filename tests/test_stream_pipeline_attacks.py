"""Attacks on the streams' pipeline surfaces (lanes of pipelined appends, followed reads, the log's
checkpoint thread), each against real in-process nodes (real TCP and UDP sockets, real SQLite). A test
that found a hole asserts the safe behaviour; an open hole is a strict xfail naming it.

Tried: another account flooding the primary's lane table with fresh lanes (an honest socket's lane
was forgotten and its next append failed); the same lane id named on another stream by another account;
a far place that waits its 3 s (it holds no stream lock); a lane whose appends each wait behind a busy
stream lock (the wait counted from the first, and a lane making progress failed); pipelined reads and
follows whose 8 MiB answers the peer never takes (each was written before any drained); a follow's rid
used twice (the first one could no longer be stopped); a follow of a deleted stream or one its retention
keeps empty (its rounds came back at once, in a busy loop: 18,000 answers in 1.5 s, or the node's event
loop frozen while the peer stayed; on the primary's own node a feed froze it until it went idle, 30 s);
a blocking read of a stream kept empty (it did not block); a home flooding a follow nobody takes; a home
answering every follow `not_primary`; one user's followed streams taking its node's follows at a primary
(another user's long poll then ended empty at once); the checkpoint thread racing the log's close."""

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_stream_attacks import _buffered, _hostile_link

from dhtmesh.node.services import Services
from dhtmesh.node.streams import feeds, lanes, replica
from dhtmesh.node.streams.errors import BadStreamRequest, StreamUnavailable
from dhtmesh.node.streams.links import MAX_QUEUED, MAX_QUEUED_BYTES, LinkDown
from dhtmesh.node.streams.log import MAX_ANSWER_BYTES, StreamLog
from dhtmesh.node.streams.wire import FOLLOW, MAX_ENTRY, UNFOLLOW, answer, read_frame, request
from dhtmesh.node.transfer.framing import FramingError
from dhtmesh.testing.waiting import eventually

from support import stream_services

pytestmark = pytest.mark.unit
HONEST = "alice's token"
TOKEN = "mallory's token"


@pytest.fixture
async def node() -> AsyncIterator[Services]:
    async with stream_services(1, {HONEST: "alice", TOKEN: "mallory"}) as (services,):
        yield services


def entry(n: int) -> list[tuple[bytes, None]]:
    return [(f"entry {n}".encode(), None)]


async def _read_all(node: Services, sid: str) -> list[bytes]:
    return [item.data for item in await node.streams.read(HONEST, {sid: "0"}, 100)]


# ---- lanes ---------------------------------------------------------------------------------------


async def test_another_accounts_flood_of_fresh_lanes_does_not_break_an_honest_lane(
    node: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lanes, "WAIT", 0.3)
    lane = b"honest lane 0001"
    await node.streams.append(HONEST, "cam", entry(0), (lane, 0))
    await node.streams.append(TOKEN, "spam", [(b"x", None)])

    async def cheap(n: int) -> None:  # an id below the stream's last: refused after its lane was made
        with pytest.raises(BadStreamRequest):
            await node.streams.append(TOKEN, "spam", [(b"x", "1-1")], (n.to_bytes(16, "big"), 0))

    for start in range(0, lanes.MAX_LANES + 1, 512):
        await asyncio.gather(*(cheap(n) for n in range(start, min(start + 512, lanes.MAX_LANES + 1))))
    assert await node.streams.append(HONEST, "cam", entry(1), (lane, 1))  # the flood forgot its own lanes
    assert await _read_all(node, "cam") == [b"entry 0", b"entry 1"]


async def test_a_lane_id_named_on_another_stream_by_another_account_does_not_touch_the_lane(
    node: Services,
) -> None:
    lane = b"shared lane id!!"
    await node.streams.append(HONEST, "cam", entry(0), (lane, 0))
    await node.streams.append(HONEST, "cam", entry(1), (lane, 1))
    await node.streams.append(TOKEN, "other", entry(0), (lane, 0))  # another account, another stream
    assert await node.streams.append(HONEST, "cam", entry(2), (lane, 2))
    assert await _read_all(node, "cam") == [b"entry 0", b"entry 1", b"entry 2"]


async def test_an_append_waiting_for_a_far_place_holds_no_lock_and_fails_alone(
    node: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A place far ahead (a lane never seen, place 2^62) waits WAIT for places that never come: while it
    waits, other appends of the stream (lanes or none) go through at once; then it fails, nothing written."""
    monkeypatch.setattr(lanes, "WAIT", 2.0)
    waiting = asyncio.ensure_future(node.streams.append(TOKEN, "cam", entry(99), (b"far lane", 1 << 62)))
    await asyncio.sleep(0.1)
    await node.streams.append(HONEST, "cam", entry(0))
    await node.streams.append(HONEST, "cam", entry(1), (b"honest lane", 0))
    assert not waiting.done()  # they went through while it still waited: not held behind it
    with pytest.raises(StreamUnavailable):
        await waiting
    assert await _read_all(node, "cam") == [b"entry 0", b"entry 1"]
    assert node.node.counters.get("stream_port_internal_errors") == 0


async def test_a_lane_making_progress_behind_a_busy_stream_lock_does_not_fail(
    node: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer keeps the stream's lock busy (as large appends do) for 0.35 s at a time; a lane's
    five pipelined appends get the lock in turn, one every 0.35 s, each waiting less than WAIT (0.6 s)
    for the one before it. Before: WAIT counted from when an append came, not from the lane's last
    progress, so the third one failed after 0.6 s of steady progress, and every later one with it."""
    monkeypatch.setattr(lanes, "WAIT", 0.6)
    await node.streams.append(HONEST, "cam", entry(-1))
    lock = node.streams.homes._lock("cam")
    hogging = True

    async def hog() -> None:  # FIFO: each round queues behind the lane's append that waits for the lock
        while hogging:
            async with lock:
                await asyncio.sleep(0.35)
            await asyncio.sleep(0)

    hogger = asyncio.ensure_future(hog())
    await asyncio.sleep(0.05)
    lane = b"lane behind a hog"
    appends = [asyncio.ensure_future(node.streams.append(HONEST, "cam", entry(n), (lane, n))) for n in range(5)]
    try:
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
    finally:
        hogging = False
        await hogger
    assert [type(outcome) for outcome in outcomes] == [list] * 5, outcomes
    assert await _read_all(node, "cam") == [f"entry {n}".encode() for n in range(-1, 5)]


# ---- answers the peer never takes ----------------------------------------------------------------

UNREAD = 16  # pipelined requests, each answered with ~8 MiB


@pytest.mark.parametrize("op", ["s.read", FOLLOW], ids=["reads", "follows"])
async def test_pipelined_large_answers_the_peer_never_takes_are_not_all_buffered(node: Services, op: str) -> None:
    """Any node may pipeline reads and follows from the stream's start, each answered with up to
    MAX_ANSWER_BYTES, and read nothing. Before: each concurrent answer was written before any drained,
    so 16 requests put 128 MiB in the node's buffers (256 per connection: 2 GiB)."""
    for n in range(MAX_ANSWER_BYTES // MAX_ENTRY):
        await node.streams.append(HONEST, "big", [(bytes([n]) * MAX_ENTRY, None)])
    _, writer = await _hostile_link(node)
    ask = {"sid": "big", "token": TOKEN, "after": [0, 0], "count": 1000, "wait": 0.0, "down": [], "record": None}
    writer.write(b"".join(request(op, rid, ask) for rid in range(1, UNREAD + 1)))
    most = 0
    for _ in range(20):
        await asyncio.sleep(0.1)
        most = max(most, _buffered(node))
    writer.close()
    assert most <= 2 * MAX_ANSWER_BYTES, f"the node buffered {most >> 20} MiB of answers nobody reads"
    assert await node.streams.append(HONEST, "big", entry(0))  # still served
    assert node.node.counters.get("stream_port_internal_errors") == 0


# ---- followed reads ------------------------------------------------------------------------------


async def test_a_follow_whose_rid_is_used_again_can_still_be_stopped(node: Services) -> None:
    """A peer follows twice with one rid. Before: the second replaced the first in the connection's table,
    so UNFOLLOW stopped only the second, and the first held its host's waiting-read slot (and a round
    at the primary every 5 s) for as long as the connection lived."""
    await node.streams.append(HONEST, "cam", entry(0))
    _, writer = await _hostile_link(node)
    follow = {"sid": "cam", "token": TOKEN, "after": "$", "down": [], "record": None}
    writer.write(request(FOLLOW, 7, follow) + request(FOLLOW, 7, follow))
    await asyncio.sleep(0.3)
    writer.write(request(UNFOLLOW, 8, {"rid": 7}))
    try:
        await eventually(lambda: node.streams.replica._waits.in_use == 0, within=3.0)
    finally:
        writer.close()


# ---- the log's checkpoint thread -----------------------------------------------------------------


def test_a_checkpoint_thread_racing_the_logs_close_neither_fails_nor_touches_a_closed_log(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    for round_ in range(5):
        log = StreamLog(tmp_path / f"log{round_}.sqlite3")
        state = log.ensure("s")
        log.append(state, [((n + 1, 0), 1, b"x" * 4096) for n in range(200)])
        stop = threading.Event()

        def checkpoints(log: StreamLog = log, stop: threading.Event = stop) -> None:
            try:
                while not stop.is_set():
                    log.checkpoint()
            except BaseException as error:  # reported below
                failures.append(error)

        thread = threading.Thread(target=checkpoints)
        thread.start()
        time.sleep(0.02)
        log.close()
        time.sleep(0.02)
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
    assert failures == []


# ---- followed reads answered at once -------------------------------------------------------------


class _Ticker:
    """Something else the node's event loop runs: a tick every 20 ms, counted. A loop that stands still
    runs none (a second of a working loop runs ~50; the tests ask for a tenth of that, whatever the load)."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.ticks += 1

    @classmethod
    async def started(cls) -> "_Ticker":
        return cls()

    async def stop(self) -> int:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.ticks


async def _answers_within(reader: asyncio.StreamReader, seconds: float) -> int:
    """How many answers arrive within `seconds`."""
    answers, deadline = 0, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(read_frame(reader), left)
        except TimeoutError:
            break
        answers += 1
    return answers


async def _emptied(node: Services, how: str) -> str:
    """A stream whose reads answer at once with nothing: deleted, or kept to nothing by its retention
    (max_bytes below an entry's size: its commit id is above every reader's cursor, no entry is)."""
    if how == "deleted":
        await node.streams.append(TOKEN, "gone", entry(0))
        await node.streams.delete(TOKEN, "gone")
    else:
        await node.streams.create(TOKEN, "gone", {"max_bytes": 1})
        await node.streams.append(TOKEN, "gone", entry(0))
    return "gone"


@pytest.mark.parametrize("how", ["deleted", "trimmed-to-nothing"])
async def test_a_follow_of_an_emptied_stream_is_not_answered_in_a_busy_loop(node: Services, how: str) -> None:
    """A read of such a stream answers at once, without waiting: a follow's rounds then came back one
    after another, as fast as the peer took them (17,000 answers in 1.5 s, the node's CPU spent on
    nothing) for a peer that reads 50-byte answers; any account may delete a stream, or make its own."""
    sid = await _emptied(node, how)
    reader, writer = await _hostile_link(node)
    follow = {"sid": sid, "token": TOKEN, "after": [0, 0], "down": [], "record": None}
    ticker = await _Ticker.started()
    writer.write(request(FOLLOW, 1, follow))
    try:
        answers = await _answers_within(reader, 1.5)
    finally:
        writer.close()
        ticks = await ticker.stop()
    assert answers <= 2, f"{answers} answers in 1.5 s"
    assert ticks >= 7, f"the node's loop ran {ticks} ticks in 1.5 s: it stood still"


async def test_a_blocking_read_of_a_stream_trimmed_to_nothing_waits_its_timeout(node: Services) -> None:
    sid = await _emptied(node, "trimmed-to-nothing")
    started = time.monotonic()
    assert await node.streams.read(HONEST, {sid: "0"}, 10, timeout=0.5) == []
    assert time.monotonic() - started >= 0.4  # a WS pull with `timeout` closed at once on such an answer


async def test_a_reader_waiting_on_a_deleted_stream_at_its_primary_does_not_block_the_node(
    node: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feeds, "IDLE", 0.5)  # the feed's loop ends after 0.5 s of it (30 s in a node)
    await node.streams.append(HONEST, "gone", entry(0))
    await node.streams.delete(HONEST, "gone")
    ticker = await _Ticker.started()
    try:
        assert await node.streams.read(HONEST, {"gone": "$"}, 10, timeout=1.0) == []
    finally:
        ticks = await ticker.stop()
    assert ticks >= 5, f"the node's loop ran {ticks} ticks in 1 s: it stood still"


# ---- a hostile home answering a follow -----------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "count"),
    [(65536, 10 * MAX_QUEUED), (1024 * 1024, MAX_QUEUED_BYTES // (1024 * 1024) + 16)],
    ids=["many-answers", "many-bytes"],
)
async def test_a_home_flooding_a_follow_with_answers_never_taken_ends_it_with_the_queue_bounded(
    node: Services, size: int, count: int
) -> None:
    """A hostile home (a listener speaking the streams' frames) answers a follow many times at once while
    the follower takes none: 640 answers of 64 KiB (past MAX_QUEUED), or 48 of 1 MiB (fewer than
    MAX_QUEUED, past MAX_QUEUED_BYTES). No more than both is queued, then the follow ends (LinkDown),
    the home is told to stop, and the link serves on."""
    unfollowed = asyncio.Event()

    async def hostile_home(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)  # the hello
        writer.write(answer(0, {"ok": True}))
        header, _ = await read_frame(reader)
        flood = {"ok": {"cursor": [1, 0], "rows": [[1, 0, b"x" * size]]}}
        writer.write(b"".join(answer(header["rid"], flood) for _ in range(count)))
        with contextlib.suppress(FramingError, OSError):
            while True:
                header, _ = await read_frame(reader)
                if header["op"] == UNFOLLOW:
                    unfollowed.set()
                else:
                    writer.write(answer(header["rid"], {"ok": "still here"}))

    server = await asyncio.start_server(hostile_home, "127.0.0.1", 0)
    home = (bytes(20), "127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        answers = node.streams.links.follow(home, FOLLOW, {"sid": "cam"}, 5.0)
        assert "ok" in await anext(answers)
        link = node.streams.links._links[home]
        await asyncio.sleep(0.5)  # the flood arrives, untaken
        queued = list(link._following.values())
        assert all(answers._queue.qsize() <= MAX_QUEUED and answers._bytes <= MAX_QUEUED_BYTES for answers in queued)
        with pytest.raises(LinkDown, match="piled up"):
            async for _ in answers:
                pass
        await asyncio.wait_for(unfollowed.wait(), 5)
        assert await node.streams.links.request(home, "s.live", {}) == {"ok": "still here"}
    finally:
        server.close()


# ---- one user's followed streams and another's long poll through the same node --------------------


async def test_one_users_followed_streams_do_not_end_another_users_long_poll_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replica, "MAX_WAITING_PER_HOST", 1)  # follows are not waiting reads: nothing to fill
    async with stream_services(4, {HONEST: "alice", TOKEN: "mallory"}) as mesh:
        by_primary: dict[bytes, list[str]] = {}
        for n in range(12):
            await mesh[0].streams.create(TOKEN, f"s{n}", {})
            record = await mesh[0].streams.book.find(f"s{n}")
            assert record is not None
            by_primary.setdefault(record.homes[0][0], []).append(f"s{n}")
        primary, (taken, wanted, *_) = max(by_primary.items(), key=lambda item: len(item[1]))
        forwarder = next(services for services in mesh if services.node.node_id != primary)
        hogging = asyncio.ensure_future(forwarder.streams.read(TOKEN, {taken: "$"}, 10, timeout=5.0))
        await asyncio.sleep(0.3)  # mallory's feed follows `taken` at the primary: the host's follows taken
        late = asyncio.get_running_loop().call_later(
            0.5, lambda: asyncio.ensure_future(mesh[0].streams.append(TOKEN, wanted, [(b"late", None)]))
        )
        started = time.monotonic()
        found = await forwarder.streams.read(HONEST, {wanted: "$"}, 10, timeout=3.0)
        late.cancel()
        hogging.cancel()
        assert [item.data for item in found] == [b"late"], f"{found} after {time.monotonic() - started:.2f} s"


async def test_a_home_answering_follows_not_primary_in_a_loop_costs_three_follows_and_no_long_poll() -> None:
    async with stream_services(4, {HONEST: "alice", TOKEN: "mallory"}) as mesh:
        await mesh[0].streams.create(HONEST, "cam", {})
        record = await mesh[0].streams.book.find("cam")
        assert record is not None
        liar = next(services for services in mesh if services.node.node_id == record.homes[0][0])
        reader_node = next(services for services in mesh if services is not liar)
        follows = 0

        async def not_primary(_: dict) -> AsyncIterator[dict]:  # the primary's node, lying about itself
            nonlocal follows
            follows += 1
            yield {"err": "not_primary", "primary": 0, "term": 1}

        liar.streams.replica._follow_op = not_primary
        late = asyncio.get_running_loop().call_later(
            0.5, lambda: asyncio.ensure_future(mesh[0].streams.append(HONEST, "cam", [(b"late", None)]))
        )
        started = time.monotonic()
        found = await reader_node.streams.read(HONEST, {"cam": "$"}, 10, timeout=3.0)
        late.cancel()
        assert follows <= feeds.MAX_EMPTY_FOLLOWS
        assert [item.data for item in found] == [b"late"], f"{found} after {time.monotonic() - started:.2f} s"
