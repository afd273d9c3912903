"""A stream's log on one node: ids that only go up (explicit ids, a clock that goes back), retention by
length, age and bytes, consumer groups (each entry to one consumer, redelivered when not acked), and an
acknowledged batch in the SQLite file however the process ends. Real nodes, sockets and SQLite."""

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dhtmesh.node.services import Services
from dhtmesh.node.streams import ids
from dhtmesh.node.streams.errors import BadStreamRequest, EntryTooLarge
from dhtmesh.node.streams.log import State, StreamLog
from dhtmesh.node.streams.service import Streams
from dhtmesh.testing.meshes import Mesh

from support import Tokens

pytestmark = pytest.mark.unit
TOKEN = "alice's token"


@pytest.fixture
async def streams(tmp_path: Path) -> AsyncIterator[Streams]:
    """One node's streams service (the node is every stream's only home), keeping its log in tmp_path."""
    mesh = Mesh(tmp_path)
    (node,) = await mesh.grow(1, persist=True)
    services = Services(node)
    services.streams.accounts = Tokens({TOKEN: "alice"})  # type: ignore[assignment]
    await services.start()
    yield services.streams
    await services.stop()
    await mesh.stop()


def test_ids_strictly_increase_with_explicit_ids_and_a_clock_that_goes_back() -> None:
    last = ids.next_id(ids.ZERO, None, 1000)
    assert last == (1000, 0)
    assert ids.next_id(last, None, 1000) == (1000, 1)
    assert ids.next_id((1000, 1), None, 900) == (1000, 2)  # the clock went back: the seq goes on
    assert ids.next_id((1000, 2), "2000-5", 900) == (2000, 5)
    assert ids.next_id((2000, 5), "2000", 900) == (2000, 6)  # "<ms>": the next seq in that ms
    assert ids.next_id((2000, 6), "3000", 900) == (3000, 0)
    for not_above in ("2000-6", "1999-9", "1000", "0-1"):
        with pytest.raises(BadStreamRequest):
            ids.next_id((2000, 6), not_above, 900)
    for malformed in ("", "x", "1-2-3", "-1", "1-", "99999999999999999999"):
        with pytest.raises(BadStreamRequest):
            ids.parse(malformed)


def _rows(start_ms: int, count: int, size: int = 10) -> list:
    return [((start_ms + i, 0), 1, b"x" * size) for i in range(count)]


def test_retention_trims_by_length_age_and_bytes_in_the_append_transaction(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "log.sqlite3")
    by_len = log.ensure("len")
    by_len.meta = {"max_len": 3}
    log.append(by_len, _rows(1, 5))
    assert [row[0] for row in log.rows_after("len", ids.ZERO, 10)] == [(3, 0), (4, 0), (5, 0)]
    assert (by_len.length, by_len.bytes, by_len.added, by_len.max_deleted) == (3, 30, 5, (2, 0))

    by_age = log.ensure("age")
    by_age.meta = {"max_age": 60}
    now = ids.now_ms()
    log.append(by_age, _rows(now - 120_000, 2) + _rows(now - 1_000, 2))
    assert [row[0][0] for row in log.rows_after("age", ids.ZERO, 10)] == [now - 1_000, now - 999]

    by_bytes = log.ensure("bytes")
    by_bytes.meta = {"max_bytes": 25}
    log.append(by_bytes, _rows(1, 4))
    assert (by_bytes.length, by_bytes.bytes) == (2, 20)
    log.close()

    reopened = StreamLog(tmp_path / "log.sqlite3")  # the state came back from the file
    state = reopened.state("len")
    assert isinstance(state, State) and (state.length, state.last, state.max_deleted) == (3, (5, 0), (2, 0))
    reopened.close()


async def test_the_wal_is_checkpointed_in_a_thread_and_a_failed_transaction_leaves_the_state_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.sqlite3"
    log = StreamLog(path)
    state = log.ensure("big")
    for first in range(1, 2001, 100):
        log.append(state, [((ms, 0), 1, bytes(1024)) for ms in range(first, first + 100)])
    before = path.stat().st_size
    await asyncio.to_thread(log.checkpoint)  # the entries move from the WAL into the database file
    assert path.stat().st_size > before + 2000 * 1024
    with pytest.raises(sqlite3.IntegrityError):  # an id already there: the transaction rolls back
        log.append(state, [((2001, 0), 1, b"new"), ((5, 0), 1, b"duplicate")], commit=(2001, 0))
    assert (state.last, state.length, state.added, state.commit) == ((2000, 0), 2000, 2000, ids.ZERO)
    assert [row[0] for row in log.rows_after("big", (1999, 0), 10)] == [(2000, 0)]
    log.close()
    log.checkpoint()  # closed: nothing to do, nothing raised


async def test_appends_are_in_order_and_explicit_ids_must_be_above_the_last(streams: Streams) -> None:
    first = await streams.append(TOKEN, "s", [(b"a", None), (b"b", None), (b"c", "99999999999999-0")])
    parsed = [ids.parse(entry_id) for entry_id in first]
    assert parsed == sorted(parsed) and len(set(parsed)) == 3
    with pytest.raises(BadStreamRequest):
        await streams.append(TOKEN, "s", [(b"d", "99999999999999-0")])
    with pytest.raises(EntryTooLarge):
        await streams.append(TOKEN, "s", [(b"x" * (Streams.MAX_ENTRY + 1), None)])
    later = await streams.append(TOKEN, "s", [(b"d", None)])
    assert ids.parse(later[0]) > parsed[-1]
    assert [entry.data for entry in await streams.read(TOKEN, {"s": "0"}, 10)] == [b"a", b"b", b"c", b"d"]
    assert [entry.data for entry in await streams.latest(TOKEN, "s", 2)] == [b"c", b"d"]
    info = await streams.info(TOKEN, "s")
    assert (info.length, info.entries_added, info.last_generated_id) == (4, 4, later[0])


async def test_a_group_gives_each_entry_to_one_consumer_and_redelivers_what_is_not_acked(streams: Streams) -> None:
    await streams.append(TOKEN, "g", [(b"%d" % i, None) for i in range(4)])
    one = await streams.group_read(TOKEN, "g", "workers", "c1", 2, 0, ack_wait=0.3)
    two = await streams.group_read(TOKEN, "g", "workers", "c2", 5, 0, ack_wait=0.3)
    assert [e.data for e in one] == [b"0", b"1"] and [e.data for e in two] == [b"2", b"3"]
    assert await streams.group_ack(TOKEN, "g", "workers", [e.id for e in two]) == 2
    assert await streams.group_read(TOKEN, "g", "workers", "c2", 5, 0, ack_wait=0.3) == []
    await asyncio.sleep(0.4)  # c1's entries are past their ack wait
    again = await streams.group_read(TOKEN, "g", "workers", "c2", 5, 0, ack_wait=0.3)
    assert [e.data for e in again] == [b"0", b"1"]
    assert await streams.group_ack(TOKEN, "g", "workers", [e.id for e in again] + [two[0].id]) == 2
    waiting = asyncio.ensure_future(streams.group_read(TOKEN, "g", "workers", "c1", 5, 5.0))
    await asyncio.sleep(0.1)
    await streams.append(TOKEN, "g", [(b"new", None)])
    assert [e.data for e in await waiting] == [b"new"]
    assert (await streams.info(TOKEN, "g")).groups == 1


async def test_an_acknowledged_batch_is_in_the_file_however_the_process_ends(streams: Streams) -> None:
    entry_ids = await streams.append(TOKEN, "durable", [(b"kept %d" % i, None) for i in range(100)])
    path = streams.node.data_dir / "streams.sqlite3"  # type: ignore[operator]
    other = sqlite3.connect(path)  # another process's view of the file, with this one never closed
    rows = other.execute("SELECT ms, seq, data FROM entries WHERE sid = 'durable' ORDER BY ms, seq").fetchall()
    other.close()
    assert [ids.text((ms, seq)) for ms, seq, _ in rows] == entry_ids
    assert rows[-1][2] == b"kept 99"


async def test_meta_is_merged_or_replaced_and_checked(streams: Streams) -> None:
    assert await streams.create(TOKEN, "m", {"max_len": 2, "owner": "a"}) == {"max_len": 2, "owner": "a"}
    assert await streams.create(TOKEN, "m", {"note": 1}) == {"max_len": 2, "owner": "a", "note": 1}
    assert await streams.create(TOKEN, "m", {"note": 2}, override=True) == {"note": 2}
    for bad in ({"max_len": 0}, {"max_age": "1"}, {"x": "y" * 20_000}):
        with pytest.raises(BadStreamRequest):
            await streams.create(TOKEN, "m", bad)
    await streams.delete(TOKEN, "m")
    assert "m" not in await streams.names(TOKEN)


async def test_a_read_of_several_streams_returns_once_one_has_entries(streams: Streams) -> None:
    await streams.create(TOKEN, "quiet", {})
    await streams.create(TOKEN, "busy", {})
    cursors = {"quiet": "$", "busy": "$", "unknown": "0"}
    waiting = asyncio.ensure_future(streams.read(TOKEN, cursors, 10, timeout=10.0))
    await asyncio.sleep(0.2)
    (written,) = await streams.append(TOKEN, "busy", [(b"news", None)])
    assert [(e.sid, e.id, e.data) for e in await waiting] == [("busy", written, b"news")]
    assert await streams.read(TOKEN, {"quiet": "$", "unknown": "0"}, 10, timeout=0.2) == []
