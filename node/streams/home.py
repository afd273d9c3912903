"""`Homes`: this node's part as a home of streams: the primary's work (ids, appends replicated to a
majority, reads of committed entries, meta, groups, deletion) and the follower's (taking a primary's
appends and state, promising terms), over the log (`log.StreamLog`) and the links to the other homes.

Replication, per stream: the primary of a term alone gives ids and appends. It writes a batch to its
log, sends it to the other homes (in order, on one connection each, so batches are pipelined) with the
id and term of the entry before it, and reports it committed once a majority of homes (itself
included) hold it durably. A follower takes a batch only from the primary of the highest term it
promised, and only if the batch follows its last entry; otherwise it answers its last and commit ids
and the primary sends it what it lacks (dropping the follower's entries past its commit id when they
are not on the primary's log).

Failover: a home asked to serve when the primary is down (the caller says so, and the primary does not
answer this home either) claims the next term. It needs the promise
of a majority (itself included); each promiser answers its last entry's (term, id) and its state. The
claimer takes the entries it lacks from the promiser with the highest (term, id) (which holds every
committed entry, since a committed entry is on a majority and any two majorities meet), then serves.
A home that promised a term refuses appends of older terms, so a deposed primary can commit nothing.
"""

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dhtmesh.node.records.stream import StreamRecord
from dhtmesh.node.stats import Counters
from dhtmesh.node.streams.errors import BadStreamRequest, EntryTooLarge, StreamUnavailable, UnknownStream
from dhtmesh.node.streams.groups import MAX_PENDING, Groups, check_name, now
from dhtmesh.node.streams.ids import Id, next_id, now_ms
from dhtmesh.node.streams.lanes import Lanes
from dhtmesh.node.streams.links import LinkDown, Links
from dhtmesh.node.streams.log import Row, State, StreamLog
from dhtmesh.node.streams.records import StreamBook
from dhtmesh.node.streams.retention import checked_meta
from dhtmesh.node.streams.wire import MAX_BATCH, MAX_BATCH_BYTES, MAX_ENTRY
from dhtmesh.node.tasks import TaskSet

log = logging.getLogger(__name__)

REPLICA_TIMEOUT = 3.0  # seconds a home waits for another's answer before counting it unreachable
RESYNC_ROWS = 1000
TRIM_PERIOD = 5.0  # seconds between retention passes over every stream
CHECKPOINT_PERIOD = 0.5  # seconds between the log's checkpoints
PRIMARY_FRESH = 10.0  # seconds after its primary's last message in which a home helps no uninvited claim
RETRY_SYNC = 1.0  # seconds between attempts to bring a lagging home up to date
MAX_WAITING_READERS = 1024
MAX_STREAMS = 10_000  # streams one node is a home of
COMMIT_SAVE_DELAY = 0.1  # seconds a primary's commit id may wait before it is saved on its own

Verifier = Callable[[str], Awaitable[str]]


class NotPrimary(Exception):
    """This home does not serve the stream now; `primary` is the home index to try, if known."""

    def __init__(self, primary: int | None, term: int) -> None:
        super().__init__(f"not the primary (try home {primary}, term {term})")
        self.primary = primary
        self.term = term


@dataclass
class _Leading:
    """The term this node is primary in, for one stream, and the homes that lag behind it."""

    term: int
    lagging: set[bytes]
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once the first sync with the homes ended


def _rows_wire(rows: list[Row]) -> list[list]:
    return [[ms, seq, term, data] for (ms, seq), term, data in rows]


def _rows_of(raw: Any) -> list[Row]:
    if not (isinstance(raw, list) and len(raw) <= RESYNC_ROWS):
        raise BadStreamRequest("rows must be a list of at most 1000 [ms, seq, term, data]")
    rows = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[3], bytes)):
            raise BadStreamRequest("a row is [ms, seq, term, data]")
        ms, seq, term, data = item
        if not all(type(n) is int and 0 <= n < 1 << 63 for n in (ms, seq, term)):
            raise BadStreamRequest("a row's ms, seq and term are integers")
        rows.append(((ms, seq), term, data))
    return rows


def _id_of(raw: Any) -> Id:
    if not (isinstance(raw, list) and len(raw) == 2 and all(type(n) is int and 0 <= n < 1 << 63 for n in raw)):
        raise BadStreamRequest("an id is [ms, seq]")
    return raw[0], raw[1]


class Homes:
    def __init__(
        self,
        node_id: bytes,
        log: StreamLog,
        links: Links,
        book: StreamBook,
        verify: Verifier,
        counters: Counters,
    ) -> None:
        self.node_id = node_id
        self.log = log
        self.groups = Groups(log.db)
        self._links = links
        self._book = book
        self._verify = verify
        self._counters = counters
        self._leading: dict[str, _Leading] = {}
        self._primary: dict[str, tuple[int, int]] = {}  # sid -> (term, home index) as last heard
        self._locks: dict[str, asyncio.Lock] = {}
        self._committed: dict[str, asyncio.Event] = {}  # set (and replaced) at each commit: readers wake at once
        self._waiting = 0
        self._unsaved: dict[str, asyncio.TimerHandle] = {}  # streams whose commit id is to be saved
        self._heard: dict[str, float] = {}  # sid -> when its primary's last message was taken
        self._lanes = Lanes()
        self._tasks = TaskSet(counters)

    # ---- the stream's homes ------------------------------------------------------------------

    async def record(self, sid: str, carried: object = None) -> StreamRecord:
        """The stream's record, from the DHT, else the signed one the request `carried` (just made, it
        may not have reached every replica of its key yet)."""
        record = await self._book.find(sid, carried)
        if record is None:
            raise UnknownStream(f"no stream {sid!r}")
        return record

    def _index(self, record: StreamRecord, node_id: bytes) -> int | None:
        return next((i for i, home in enumerate(record.homes) if home[0] == node_id), None)

    async def home_of(self, sid: str, caller: bytes, carried: object = None) -> tuple[StreamRecord, int]:
        """The stream's record and the caller's index among its homes, if this node and the caller are
        both homes of it; raises BadStreamRequest otherwise."""
        record = await self.record(sid, carried)
        index = self._index(record, caller)
        if index is None or self._index(record, self.node_id) is None:
            self._counters.add("stream_replica_not_home")
            raise BadStreamRequest("replica operations are for a stream's homes only")
        return record, index

    def _state(self, record: StreamRecord) -> State:
        if self.log.state(record.sid) is None and len(self.log.sids()) >= MAX_STREAMS:
            self._counters.add("stream_quota_refused")
            raise StreamUnavailable("this node holds as many streams as it may")
        if self.log.state(record.sid) is None:
            self._tasks.spawn(self._book.keep(record.sid))  # a home re-announces its streams' records
        return self.log.ensure(record.sid)

    def _lock(self, sid: str) -> asyncio.Lock:
        return self._locks.setdefault(sid, asyncio.Lock())

    def _commit_event(self, sid: str) -> asyncio.Event:
        return self._committed.setdefault(sid, asyncio.Event())

    # ---- the primary -------------------------------------------------------------------------

    async def primary(self, record: StreamRecord, down: list[bytes]) -> State:
        """The stream's state, if this node is (or becomes) its primary; raises NotPrimary, or
        StreamUnavailable when no majority promises it the next term."""
        state = self._state(record)
        leading = self._leading.get(record.sid)
        if leading is not None and leading.term == state.term:
            await leading.ready.wait()
            return state
        known = self._primary.get(record.sid)
        if known is not None and known[0] == state.term and record.homes[known[1]][0] != self.node_id:
            if not await self._down(record, record.homes[known[1]], down):
                raise NotPrimary(known[1], known[0])
        for home in record.homes:
            if home[0] == self.node_id:
                break
            if not await self._down(record, home, down):
                raise NotPrimary(self._index(record, home[0]), state.term)  # an earlier home may serve
        await self._claim(record, state, polite=not down)
        leading = self._leading.get(record.sid)
        if leading is None:
            raise NotPrimary(None, state.term)
        await leading.ready.wait()
        return state

    async def _down(self, record: StreamRecord, home: tuple, down: list[bytes]) -> bool:
        """Whether `home` is down: named so by the caller and not answering this node either (a caller's
        word alone let any account holder's node depose a live primary, as often as it liked)."""
        if home[0] not in down:
            return False
        if await self._ask(home, "r.position", {"sid": record.sid}) is not None:
            self._counters.add("stream_claims_refused_primary_alive")
            return False
        return True

    async def _claim(self, record: StreamRecord, state: State, polite: bool) -> None:
        """Become the stream's primary in the next term. A `polite` claim (the caller named no home down:
        this node is the first home, back from a restart or asked first) is made only if a majority
        would promise (`_prevote`): a home back from a restart took the stream over from a live primary,
        failing its writers' appends."""
        async with self._lock(record.sid):
            if (leading := self._leading.get(record.sid)) is not None and leading.term == state.term:
                return
            others = [home for home in record.homes if home[0] != self.node_id]
            if polite:
                await self._prevote(record, state, others)
            state.term += 1
            self.log.save(state)
            term = state.term
            answers = await asyncio.gather(
                *(
                    self._ask(
                        home, "r.promise", {"sid": record.sid, "term": term, "record": self._book.wire(record.sid)}
                    )
                    for home in others
                )
            )
            promised = [
                (home, answer) for home, answer in zip(others, answers, strict=True) if answer and "ok" in answer
            ]
            if 1 + len(promised) <= len(record.homes) // 2:
                self._counters.add("stream_claims_failed")
                self._defer_to_newer(record, state, answers)
                raise StreamUnavailable(f"no majority of stream {record.sid!r}'s homes answered")
            await self._take_best(record, state, promised)
            # Its own term on every entry not known committed: a later claimer then prefers this log to
            # any that holds an older primary's uncommitted entries (Raft's "commit one of your term").
            self.log.restamp(state, state.commit, term)
            leading = self._leading[record.sid] = _Leading(term, {home[0] for home in others})
            self._primary[record.sid] = (term, self._index(record, self.node_id) or 0)
            self._counters.add("stream_claims")
        synced = await asyncio.gather(*(self._sync_once(record, state, home, leading) for home in others))
        for home, ok in zip(others, synced, strict=True):
            if not ok:
                self._tasks.spawn(self._keep_syncing(record, state, home, leading))
        if 1 + sum(synced) > len(record.homes) // 2:
            self._commit(state, state.last)
        leading.ready.set()

    async def _prevote(self, record: StreamRecord, state: State, others: list[tuple]) -> None:
        """Whether a majority of the homes would promise the next term (nothing changes anywhere); if
        not, raises NotPrimary naming the primary they follow, or StreamUnavailable."""
        args = {"sid": record.sid, "term": state.term + 1, "record": self._book.wire(record.sid)}
        answers = await asyncio.gather(*(self._ask(home, "r.prevote", args) for home in others))
        if 1 + sum(1 for answer in answers if answer and "ok" in answer) > len(record.homes) // 2:
            return
        self._counters.add("stream_prevotes_refused")
        self._defer_to_newer(record, state, answers)
        raise StreamUnavailable(f"no majority of stream {record.sid!r}'s homes would take a new primary")

    def _defer_to_newer(self, record: StreamRecord, state: State, answers: list[dict | None]) -> None:
        """After a failed claim: if homes hold a term as new as the one claimed and name its primary, take
        that term and send the caller there (raises NotPrimary). A home back from a restart found the
        stream served by another in a newer term: its claim failed (a 503 for its caller), and the next
        one took the stream over from a live primary."""
        newer = [a for a in answers if a and a.get("err") == "stale" and type(a.get("term")) is int]
        newer = [a for a in newer if a["term"] >= state.term]
        if not newer:
            return
        term = max(a["term"] for a in newer)
        state.term = term
        self.log.save(state)
        for answer in newer:
            index = answer.get("primary")
            if answer["term"] == term and type(index) is int and 0 <= index < len(record.homes):
                if record.homes[index][0] != self.node_id:
                    self._primary[record.sid] = (term, index)
                    self._counters.add("stream_claims_deferred")
                    raise NotPrimary(index, term)

    async def _take_best(self, record: StreamRecord, state: State, promised: list[tuple[tuple, dict]]) -> None:
        """Catch up with the promiser holding the most: its entries and, if newer, its state."""
        best_home, best = None, {"last": [*state.last], "last_term": state.last_term}
        for home, answer in promised:
            if (answer["last_term"], tuple(answer["last"])) > (best["last_term"], tuple(best["last"])):
                best_home, best = home, answer
            if answer["version"] > state.version:
                self._apply_state(state, answer)
        if best_home is None:
            return
        self.log.truncate_after(state, state.commit)
        target = tuple(best["last"])
        while state.last < target:
            answer = await self._ask(best_home, "r.fetch", {"sid": record.sid, "after": [*state.last]})
            rows = _rows_of(answer.get("rows") if answer else None)
            if not rows:
                raise StreamUnavailable(f"stream {record.sid!r}: the home holding the most went away")
            self.log.append(state, rows)

    async def append(
        self,
        record: StreamRecord,
        down: list[bytes],
        entries: list[tuple[bytes, str | None]],
        lane: tuple[bytes, int] | None = None,
        owner: str = "",
    ) -> list[Id]:
        """The new entries' ids, once a majority of the homes holds them. Appends of one `lane` (of
        `owner`'s, the account that sends them) get their ids in the lane's order (`lanes.Lanes`), while
        earlier ones still wait for their majority."""
        state = await self.primary(record, down)
        async with self._lanes.turn(owner, record.sid, lane):
            if state.deleted:
                await self._set_state(record, state, lambda: setattr(state, "deleted", False))
            rows, votes, leading = await self._start_append(record, state, entries)
        if not await votes.majority():
            self._counters.add("stream_appends_unavailable")
            if self._leading.get(record.sid) is not leading:
                raise NotPrimary(None, state.term)  # deposed meanwhile: the writer tries the other homes
            raise StreamUnavailable(f"no majority of stream {record.sid!r}'s homes holds the entries")
        self._commit(state, rows[-1][0])
        return [row[0] for row in rows]

    async def _start_append(
        self, record: StreamRecord, state: State, entries: list[tuple[bytes, str | None]]
    ) -> tuple[list[Row], "_Votes", _Leading]:
        """Ids for the entries, sent to the other homes and written to this node's log: the rows, the
        homes' votes to come, and the term it was done in."""
        async with self._lock(record.sid):
            leading = self._leading.get(record.sid)
            if leading is None or leading.term != state.term:
                raise NotPrimary(None, state.term)
            rows, last, clock = [], state.last, now_ms()
            for data, explicit in entries:
                last = next_id(last, explicit, clock)
                rows.append((last, state.term, data))
            args = {"sid": record.sid, "term": leading.term, "prev": [*state.last, state.last_term],
                    "rows": _rows_wire(rows), "commit": [*state.commit]}  # fmt: skip
            votes = _Votes(len(record.homes))
            # To the other homes first, then to this node's log while they write theirs: the batch's
            # latency is one log write and a round trip, not two writes and a round trip. Nothing counts
            # as committed before the local write (this node's own vote) is done.
            for home in record.homes:
                if home[0] == self.node_id:
                    continue
                if home[0] in leading.lagging:
                    votes.count(False)  # it is being brought up to date from the log, this batch included
                    continue
                sent = await self._send(home, "r.append", args)
                self._tasks.spawn(self._replicated(record, state, home, leading, sent, votes))
            self._append_own(record.sid, state, rows)
        return rows, votes, leading

    def _append_own(self, sid: str, state: State, rows: list[Row]) -> None:
        """The primary's own write of a batch the other homes were sent; if it fails, this node steps down
        (the homes may hold the batch: the next primary, which takes the longest log, decides its fate),
        so no id is given twice."""
        try:
            self.log.append(state, rows)
        except sqlite3.Error as error:
            self._step_down(sid, state.term)
            self._counters.add("stream_log_failures")
            raise StreamUnavailable(f"stream {sid!r}: this home could not write its log") from error

    async def _majority(self, record: StreamRecord, votes: "_Votes") -> None:
        if not await votes.majority():
            self._counters.add("stream_appends_unavailable")
            raise StreamUnavailable(f"no majority of stream {record.sid!r}'s homes holds the change")

    def _commit(self, state: State, upto: Id) -> None:
        if upto > state.commit:
            state.commit = upto
            event = self._committed.pop(state.sid, None)
            if event is not None:
                event.set()
            # Saved later, at most once per COMMIT_SAVE_DELAY (and with each batch, in its transaction):
            # the commit id on disk may lag (a node restarted serves a little less until the next commit,
            # as Raft keeps none), never lead; a transaction per commit was a third of a home's log work.
            if state.sid not in self._unsaved:
                self._unsaved[state.sid] = asyncio.get_running_loop().call_later(
                    COMMIT_SAVE_DELAY, self._save_commit, state
                )

    def _save_commit(self, state: State) -> None:
        self._unsaved.pop(state.sid, None)
        try:
            self.log.save(state)
        except sqlite3.Error as error:  # the log closed meanwhile (the node stopping), or a failing disk
            self._counters.add("stream_commit_not_saved")
            log.warning("the commit id of stream %r was not saved: %s", state.sid, error)

    async def _replicated(
        self, record: StreamRecord, state: State, home: tuple, leading: _Leading, sent: Awaitable[dict] | None,
        votes: "_Votes",
    ) -> None:  # fmt: skip
        """Count a home's answer to a batch; a home that did not take it is brought up to date."""
        answer = await self._answer(sent)
        ok = answer is not None and "ok" in answer
        votes.count(ok)
        if ok:
            return
        if answer is not None and answer.get("err") == "stale":
            self._step_down(record.sid, answer.get("term", 0))
        elif home[0] not in leading.lagging:
            leading.lagging.add(home[0])
            self._tasks.spawn(self._keep_syncing(record, state, home, leading))

    async def _keep_syncing(self, record: StreamRecord, state: State, home: tuple, leading: _Leading) -> None:
        """Bring a lagging home up to this primary's log, retrying while this node leads."""
        while self._leading.get(record.sid) is leading:
            if await self._sync_once(record, state, home, leading):
                return
            await asyncio.sleep(RETRY_SYNC)

    async def _sync_once(self, record: StreamRecord, state: State, home: tuple, leading: _Leading) -> bool:
        """Send one home what it lacks of this primary's log; True once it holds all of it (from then on
        it takes the batches `append` sends)."""
        answer = await self._ask(home, "r.position", {"sid": record.sid})
        if answer is None or "ok" not in answer:
            return False
        start = _id_of(answer.get("last"))
        if start > state.last or self.log.term_at(record.sid, start) != answer.get("last_term"):
            start = min(_id_of(answer.get("commit")), state.last)  # its entries past its commit may not be ours
        while self._leading.get(record.sid) is leading:
            async with self._lock(record.sid):
                rows = self.log.rows_after(record.sid, start, RESYNC_ROWS)
                args = {"sid": record.sid, "term": leading.term, "prev": [*start, 0], "truncate": True,
                        "rows": _rows_wire(rows), "commit": [*state.commit]}  # fmt: skip
                caught_up = not rows or rows[-1][0] == state.last
                if caught_up:
                    leading.lagging.discard(home[0])  # the next batch is sent after this one
                sent = await self._send(home, "r.append", args)
            answer = await self._answer(sent)
            if answer is None or "ok" not in answer:
                leading.lagging.add(home[0])
                return False
            if caught_up:  # and its meta and groups, which it may have missed while away
                return await self._ask(home, "r.state", self._state_wire(state, None)) is not None
            start = rows[-1][0]
        return False

    def _step_down(self, sid: str, term: int) -> None:
        self._leading.pop(sid, None)
        state = self.log.state(sid)
        if state is not None and term > state.term:
            state.term = term
            self.log.save(state)
        self._counters.add("stream_primary_deposed")

    async def _ask(self, home: tuple, op: str, args: dict) -> dict | None:
        return await self._answer(await self._send(home, op, args))

    async def _send(self, home: tuple, op: str, args: dict) -> Awaitable[dict] | None:
        """Send a request to another home now (in order with this node's others to it)."""
        try:
            return await self._links.send(tuple(home), op, args, REPLICA_TIMEOUT)
        except LinkDown:
            self._counters.add("stream_replica_unreachable")
            return None

    async def _answer(self, sent: Awaitable[dict] | None) -> dict | None:
        """The answer to a request `_send` sent, or None if the home could not be reached."""
        if sent is None:
            return None
        try:
            return await sent
        except LinkDown:
            self._counters.add("stream_replica_unreachable")
            return None

    # ---- the primary's reads and state -------------------------------------------------------

    async def read(
        self, record: StreamRecord, down: list[bytes], after: str | list, count: int, wait: float, counted: bool = True
    ) -> tuple[Id, list[Row]]:
        """Committed entries above `after` ("$": the commit id now), at most `count`; with `wait`,
        waits that long for one (a `counted` wait is one of MAX_WAITING_READERS; a followed read's round
        is bounded by its caller). Returns the cursor to read on from, and the entries. Committed ids no
        entry holds any more (retention trimmed them) are passed over: a stream whose retention keeps
        it empty made every waiting read return at once, and a follower of it spin."""
        state = await self.primary(record, down)
        cursor = state.commit if after == "$" else _id_of(after)
        rows = self.log.rows_after(record.sid, cursor, count, state.commit)
        if not rows:
            cursor = max(cursor, state.commit)
        if rows or wait <= 0 or state.deleted:
            return (rows[-1][0] if rows else cursor), rows
        if counted and self._waiting >= MAX_WAITING_READERS:
            self._counters.add("stream_readers_over_cap")
            return cursor, []
        self._waiting += counted
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while state.commit <= cursor and not state.deleted:
                        await self._commit_event(record.sid).wait()
        finally:
            self._waiting -= counted
        rows = self.log.rows_after(record.sid, cursor, count, state.commit)
        return (rows[-1][0] if rows else max(cursor, state.commit)), rows

    async def latest(self, record: StreamRecord, down: list[bytes], count: int) -> list[Row]:
        state = await self.primary(record, down)
        return self.log.latest(record.sid, count, state.commit)

    async def info(self, record: StreamRecord, down: list[bytes]) -> dict:
        state = await self.primary(record, down)
        if state.deleted:
            raise UnknownStream(f"no stream {record.sid!r}")
        first = self.log.first(record.sid)
        last = self.log.latest(record.sid, 1, state.commit)
        return {
            "length": state.length, "bytes": state.bytes, "first": _row_wire(first),
            "last": _row_wire(last[0] if last else None),
            "last_generated_id": [*state.last], "entries_added": state.added, "max_deleted_id": [*state.max_deleted],
            "groups": self.groups.count(record.sid), "meta": state.meta,
        }  # fmt: skip

    async def set_meta(self, record: StreamRecord, down: list[bytes], meta: dict, override: bool) -> dict:
        state = await self.primary(record, down)
        merged = checked_meta(dict(meta) if override or state.deleted else {**state.meta, **meta})

        def change() -> None:
            state.meta = merged
            state.deleted = False

        await self._set_state(record, state, change)
        self.log.trim(state)
        return state.meta

    async def delete(self, record: StreamRecord, down: list[bytes]) -> None:
        state = await self.primary(record, down)
        if state.deleted:
            raise UnknownStream(f"no stream {record.sid!r}")
        await self._set_state(record, state, lambda: None, drop=True)

    async def live(self, record: StreamRecord, down: list[bytes]) -> bool:
        state = await self.primary(record, down)
        return not state.deleted

    async def _set_state(
        self,
        record: StreamRecord,
        state: State,
        change: Callable[[], None],
        drop: bool = False,
        group: str | None = None,
    ) -> None:
        """Change the stream's state (meta, deletion, a group) here and on a majority of its homes."""
        async with self._lock(record.sid):
            change()
            if drop:
                self.log.drop(state)
                self.groups.drop(record.sid)
            state.version += 1
            self.log.save(state)
            args = self._state_wire(state, [group] if group else None)
            others = [home for home in record.homes if home[0] != self.node_id]
            votes = _Votes(len(record.homes))
            for home in others:
                self._tasks.spawn(_voted(self._answer(await self._send(home, "r.state", args)), votes))
        await self._majority(record, votes)

    def _state_wire(self, state: State, groups: list[str] | None) -> dict:
        blobs = self.groups.of(state.sid)
        chosen = blobs if groups is None else {name: blobs[name] for name in groups if name in blobs}
        return {"sid": state.sid, "term": state.term, "version": state.version, "meta": state.meta,
                "deleted": state.deleted, "groups": chosen}  # fmt: skip

    def _apply_state(self, state: State, args: dict) -> None:
        meta, deleted, groups = args.get("meta"), args.get("deleted"), args.get("groups")
        if not (isinstance(meta, dict) and isinstance(deleted, bool) and isinstance(groups, dict)):
            raise BadStreamRequest("a state is meta, deleted and groups")
        state.meta, state.version = checked_meta(meta), args["version"]
        if deleted and not state.deleted:
            self.log.drop(state)
            self.groups.drop(state.sid)
        state.deleted = deleted
        for name, blob in groups.items():
            if isinstance(name, str) and isinstance(blob, bytes):
                self.groups.put(state.sid, name, blob)
        self.log.save(state)

    # ---- consumer groups ---------------------------------------------------------------------

    async def group_read(
        self,
        record: StreamRecord,
        down: list[bytes],
        group: str,
        consumer: str,
        count: int,
        wait: float,
        ack_wait: float,
    ) -> list[Row]:
        check_name(group, "group")
        check_name(consumer, "consumer")
        state = await self.primary(record, down)
        rows = await self._deliver(record, state, group, consumer, count, ack_wait)
        if rows or wait <= 0:
            return rows
        cursor = self.groups.get(record.sid, group).cursor
        await self.read(record, down, [*cursor], 1, wait)
        return await self._deliver(record, state, group, consumer, count, ack_wait)

    async def _deliver(
        self, record: StreamRecord, state: State, group: str, consumer: str, count: int, ack_wait: float
    ) -> list[Row]:
        chosen: list[Row] = []

        def change() -> None:
            entry = self.groups.get(record.sid, group)
            first = self.log.first(record.sid)
            entry.forget_before(first[0] if first else state.last)
            moment = now()
            due = entry.due(consumer, count, ack_wait, moment)
            chosen.extend(
                row for entry_id in due for row in self.log.rows_after(record.sid, _before(entry_id), 1, entry_id)
            )
            room = min(count - len(chosen), max(0, MAX_PENDING - len(entry.pending)))
            fresh = self.log.rows_after(record.sid, entry.cursor, room, state.commit) if room > 0 else []
            if fresh:
                entry.cursor = fresh[-1][0]
            chosen.extend(fresh)
            entry.deliver([row[0] for row in chosen], consumer, moment)
            self.groups.save(record.sid, group)

        await self._set_state(record, state, change, group=group)
        return sorted(chosen)

    async def group_ack(self, record: StreamRecord, down: list[bytes], group: str, ids: list[Id]) -> int:
        check_name(group, "group")
        state = await self.primary(record, down)
        acked = 0

        def change() -> None:
            nonlocal acked
            entry = self.groups.get(record.sid, group)
            for entry_id in ids:
                acked += entry.pending.pop(entry_id, None) is not None
            self.groups.save(record.sid, group)

        await self._set_state(record, state, change, group=group)
        return acked

    async def checkpoint_periodically(self) -> None:
        """Checkpoint the log now and then, in a thread (see `log`); a failed checkpoint is counted and
        the next one tries again (the WAL keeps everything meanwhile)."""
        while True:
            await asyncio.sleep(CHECKPOINT_PERIOD)
            try:
                await asyncio.to_thread(self.log.checkpoint)
            except sqlite3.Error as error:
                self._counters.add("stream_checkpoints_failed")
                log.warning("the streams' log could not be checkpointed: %s", error)

    async def trim_periodically(self) -> None:
        """Apply every stream's retention now and then (by age, entries expire without appends)."""
        while True:
            await asyncio.sleep(TRIM_PERIOD)
            for sid in self.log.sids():
                state = self.log.state(sid)
                if state is not None and not state.deleted and state.meta.get("max_age") is not None:
                    async with self._lock(sid):
                        self.log.trim(state)

    # ---- the follower ------------------------------------------------------------------------

    async def on_promise(self, caller: bytes, args: dict) -> dict:
        record, _ = await self.home_of(args["sid"], caller, args.get("record"))
        state = self._state(record)
        term = args.get("term")
        if not (type(term) is int and term > state.term):
            return self._refusal(record.sid, state)
        state.term = term
        self.log.save(state)
        self._leading.pop(record.sid, None)
        self._primary.pop(record.sid, None)
        return {"ok": True, "last": [*state.last], "last_term": state.last_term, **self._state_wire(state, None)}

    async def on_prevote(self, caller: bytes, args: dict) -> dict:
        """Whether this home would promise `term` to a claim nobody asked for: not while it leads the
        stream, nor while the primary it follows lives (heard from in the last PRIMARY_FRESH seconds, or
        answering it now: an idle stream's primary was taken over). Changes nothing."""
        record, _ = await self.home_of(args["sid"], caller, args.get("record"))
        state = self._state(record)
        term = args.get("term")
        if not (type(term) is int and term > state.term) or record.sid in self._leading:
            return self._refusal(record.sid, state)
        known = self._primary.get(record.sid)
        if known is not None and known[0] == state.term and record.homes[known[1]][0] != self.node_id:
            heard = time.monotonic() - self._heard.get(record.sid, float("-inf")) < PRIMARY_FRESH
            if heard or await self._ask(record.homes[known[1]], "r.position", {"sid": record.sid}) is not None:
                return self._refusal(record.sid, state)
        return {"ok": True}

    def _refusal(self, sid: str, state: State) -> dict:
        """A claim refused: the term this home promised and, if it knows it, that term's primary."""
        refusal = {"err": "stale", "term": state.term}
        known = self._primary.get(sid)
        if known is not None and known[0] == state.term:
            refusal["primary"] = known[1]
        return refusal

    async def on_position(self, caller: bytes, args: dict) -> dict:
        record, _ = await self.home_of(args["sid"], caller)
        state = self._state(record)
        return {"ok": True, "last": [*state.last], "last_term": state.last_term, "commit": [*state.commit]}

    async def on_fetch(self, caller: bytes, args: dict) -> dict:
        record, _ = await self.home_of(args["sid"], caller)
        rows = self.log.rows_after(record.sid, _id_of(args.get("after")), RESYNC_ROWS)
        return {"ok": True, "rows": _rows_wire(rows)}

    async def on_append(self, caller: bytes, args: dict) -> dict:
        record, index = await self.home_of(args["sid"], caller)
        state = self._state(record)
        if not self._accept_term(state, args.get("term"), record.sid, index):
            return {"err": "stale", "term": state.term}
        prev, rows = args.get("prev"), _rows_of(args.get("rows"))
        if not (isinstance(prev, list) and len(prev) == 3):
            raise BadStreamRequest("prev is [ms, seq, term]")
        prev_id = _id_of(prev[:2])
        if args.get("truncate"):
            if state.last > prev_id:
                self.log.truncate_after(state, prev_id)
            matches = state.last == prev_id
        else:
            matches = (state.last, state.last_term) == (prev_id, prev[2])
        if not matches:
            self._counters.add("stream_replica_mismatches")
            return {"err": "mismatch", "last": [*state.last], "commit": [*state.commit]}
        commit = _id_of(args.get("commit"))
        if rows:
            self.log.append(state, rows, commit)
        elif commit > state.commit:
            state.commit = min(commit, state.last)
            self.log.save(state)
        return {"ok": True, "last": [*state.last]}

    async def on_state(self, caller: bytes, args: dict) -> dict:
        record, index = await self.home_of(args["sid"], caller)
        state = self._state(record)
        if not self._accept_term(state, args.get("term"), record.sid, index):
            return {"err": "stale", "term": state.term}
        version = args.get("version")
        if type(version) is int and version > state.version:
            self._apply_state(state, args)
        return {"ok": True}

    def _accept_term(self, state: State, term: Any, sid: str, index: int) -> bool:
        """Whether a primary's message at `term` may be taken (its term is the highest promised)."""
        if not (type(term) is int and term >= state.term):
            self._counters.add("stream_replica_stale_terms")
            return False
        if term > state.term:
            state.term = term
            self.log.save(state)
            self._leading.pop(sid, None)
        self._primary[sid] = (term, index)
        self._heard[sid] = time.monotonic()
        return True

    async def close(self) -> None:
        await self._tasks.close()
        for sid, timer in list(self._unsaved.items()):
            timer.cancel()
            if (state := self.log.state(sid)) is not None:
                self._save_commit(state)
        self.log.close()


def _before(entry_id: Id) -> Id:
    return (entry_id[0], entry_id[1] - 1) if entry_id[1] else (entry_id[0] - 1, (1 << 63) - 1)


def _row_wire(row: Row | None) -> list | None:
    return None if row is None else [row[0][0], row[0][1], row[2]]


class _Votes:
    """The homes that hold a change, this one first: a majority is reached, or can no longer be."""

    def __init__(self, homes: int) -> None:
        self._homes = homes
        self._yes = 1  # this node's own copy
        self._answered = 1
        self._decided = asyncio.Event()
        self._check()

    def count(self, yes: bool) -> None:
        self._yes += yes
        self._answered += 1
        self._check()

    def _check(self) -> None:
        if self._yes > self._homes // 2 or self._answered >= self._homes:
            self._decided.set()

    async def majority(self) -> bool:
        await self._decided.wait()
        return self._yes > self._homes // 2


async def _voted(answer: Awaitable[dict | None], votes: _Votes) -> None:
    result = await answer
    votes.count(result is not None and "ok" in result)


def check_batch(entries: list[tuple[bytes, str | None]]) -> None:
    """A batch of entries within the bounds; raises EntryTooLarge or BadStreamRequest."""
    if not entries:
        raise BadStreamRequest("a batch has at least one entry")
    if not all(
        isinstance(data, bytes) and (explicit is None or isinstance(explicit, str)) for data, explicit in entries
    ):
        raise BadStreamRequest("an entry is bytes, with an id or none")
    if len(entries) > MAX_BATCH:
        raise EntryTooLarge(f"a batch has at most {MAX_BATCH} entries")
    if any(len(data) > MAX_ENTRY for data, _ in entries):
        raise EntryTooLarge(f"an entry is at most {MAX_ENTRY} bytes")
    if sum(len(data) for data, _ in entries) > MAX_BATCH_BYTES:
        raise EntryTooLarge(f"a batch is at most {MAX_BATCH_BYTES} bytes")
