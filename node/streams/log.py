"""`StreamLog`: the durable log of every stream this node is a home of, in one SQLite file.

SQLite in WAL mode with synchronous=NORMAL: a committed transaction survives the process being killed
(not the machine losing power before a checkpoint). Checkpoints (copying the WAL into the database, and
its fsyncs) run on a connection of their own in a thread (`checkpoint`, called periodically), not in
the commit that filled the WAL: on the event loop they stalled every stream of the node for up to
tens of milliseconds several times a second. SQLite's own checkpoint stays as a backstop, at a size the
thread's keep the WAL well below. Each batch of entries is one transaction (one
`executemany`), never one per entry. Per stream the log keeps its state (`State`: last id and term,
commit id, counts, meta, the term it promised), cached in memory and written with each change.
Retention (`retention.Retention`, from the meta) is applied within each append's transaction and by
`trim`, called periodically. Entries are in a rowid table (its key an index beside it): rows of a KiB
or more made a WITHOUT ROWID table's inserts three times slower.
"""

import copy
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from dhtmesh.node.streams.ids import MAX_PART, ZERO, Id, now_ms
from dhtmesh.node.streams.retention import retention_of

Row = tuple[Id, int, bytes]  # (id, term, data) as replicated
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # of entries' data in one answer or replica message (wire.MAX_BODY is above)
BACKSTOP_CHECKPOINT_PAGES = 64_000  # WAL pages (256 MiB) past which a commit checkpoints on its own
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (sid TEXT, ms INTEGER, seq INTEGER, term INTEGER, data BLOB,
    PRIMARY KEY (sid, ms, seq));
CREATE TABLE IF NOT EXISTS streams (sid TEXT PRIMARY KEY, state BLOB);
CREATE TABLE IF NOT EXISTS groups (sid TEXT, name TEXT, state BLOB, PRIMARY KEY (sid, name)) WITHOUT ROWID;
"""


@dataclass
class State:
    """One stream's replicated state on this home."""

    sid: str
    meta: dict = field(default_factory=dict)
    term: int = 0  # the highest term this home promised (or serves, as primary)
    last: Id = ZERO
    last_term: int = 0
    commit: Id = ZERO  # every entry up to it is held by a majority
    added: int = 0
    max_deleted: Id = ZERO
    length: int = 0
    bytes: int = 0
    deleted: bool = False
    version: int = 0  # of meta, deleted and groups: the primary counts its changes

    def to_blob(self) -> bytes:
        return orjson.dumps(
            [self.meta, self.term, self.last, self.last_term, self.commit, self.added,
             self.max_deleted, self.length, self.bytes, self.deleted, self.version]
        )  # fmt: skip

    @classmethod
    def from_blob(cls, sid: str, blob: bytes) -> "State":
        meta, term, last, last_term, commit, added, max_deleted, length, size, deleted, version = orjson.loads(blob)
        return cls(sid, meta, term, tuple(last), last_term, tuple(commit), added, tuple(max_deleted),
                   length, size, deleted, version)  # fmt: skip


class StreamLog:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
        self._db.executescript(_SCHEMA)
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpointing = threading.Lock()  # the checkpointer is used by one thread at a time, closed by none
        self._states: dict[str, State] = {
            sid: State.from_blob(sid, blob) for sid, blob in self._db.execute("SELECT sid, state FROM streams")
        }

    @property
    def db(self) -> sqlite3.Connection:
        return self._db

    def close(self) -> None:
        with self._checkpointing:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._path = None
        self._db.close()

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database, as far as no reader needs it (PASSIVE: writers go
        on meanwhile). Blocking: run it in a thread."""
        with self._checkpointing:
            if self._path is None:
                return  # in memory, or closed
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def sids(self) -> list[str]:
        return sorted(self._states)

    def state(self, sid: str) -> State | None:
        return self._states.get(sid)

    def ensure(self, sid: str) -> State:
        """The stream's state, made (empty) if this home had none."""
        state = self._states.get(sid)
        if state is None:
            state = self._states[sid] = State(sid)
            self.save(state)
        return state

    def save(self, state: State) -> None:
        self._db.execute("INSERT OR REPLACE INTO streams VALUES (?, ?)", (state.sid, state.to_blob()))

    def append(self, state: State, rows: list[Row], commit: Id = ZERO) -> None:
        """Add `rows` (ids above the last) in one transaction, trimming by the stream's retention; and a
        commit id heard from the primary (up to the last row), saved with them."""
        with self._transaction(state):
            state.commit = max(state.commit, min(commit, rows[-1][0]))
            self._db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                [(state.sid, ms, seq, term, data) for (ms, seq), term, data in rows],
            )
            state.last, state.last_term = rows[-1][0], rows[-1][1]
            state.added += len(rows)
            state.length += len(rows)
            state.bytes += sum(len(data) for _, _, data in rows)
            self._trim(state)
            self.save(state)

    def truncate_after(self, state: State, entry_id: Id) -> None:
        """Drop the entries above `entry_id` (a new primary's log does not have them)."""
        with self._transaction(state):
            count, size = self._count(state.sid, "> (?, ?)", entry_id)
            if count:
                self._db.execute("DELETE FROM entries WHERE sid = ? AND (ms, seq) > (?, ?)", (state.sid, *entry_id))
                state.added -= count
                state.length -= count
                state.bytes -= size
            if state.last > entry_id:
                state.last = entry_id
                row = self._db.execute(
                    "SELECT term FROM entries WHERE sid = ? AND ms = ? AND seq = ?", (state.sid, *entry_id)
                ).fetchone()
                state.last_term = row[0] if row else state.last_term
            self.save(state)

    def trim(self, state: State) -> None:
        with self._transaction(state):
            self._trim(state)
            self.save(state)

    def drop(self, state: State) -> None:
        """Delete every entry and group of the stream; its state stays, marked deleted, so that its ids
        keep increasing if it is made again."""
        with self._transaction(state):
            self._db.execute("DELETE FROM entries WHERE sid = ?", (state.sid,))
            self._db.execute("DELETE FROM groups WHERE sid = ?", (state.sid,))
            state.max_deleted = max(state.max_deleted, state.last)
            state.length = state.bytes = 0
            state.deleted = True
            self.save(state)

    def rows_after(self, sid: str, after: Id, count: int, upto: Id | None = None) -> list[Row]:
        """At most `count` entries above `after` (up to `upto`), with their terms, in id order, and at most
        `MAX_ANSWER_BYTES` of data (one entry at least): what one answer carries."""
        upper = upto if upto is not None else (MAX_PART, MAX_PART)
        cursor = self._db.execute(
            "SELECT ms, seq, term, data FROM entries WHERE sid = ? AND (ms, seq) > (?, ?) AND (ms, seq) <= (?, ?)"
            " ORDER BY ms, seq LIMIT ?",
            (sid, *after, *upper, count),
        )
        return _bounded(((ms, seq), term, data) for ms, seq, term, data in cursor)

    def latest(self, sid: str, count: int, upto: Id) -> list[Row]:
        cursor = self._db.execute(
            "SELECT ms, seq, term, data FROM entries WHERE sid = ? AND (ms, seq) <= (?, ?)"
            " ORDER BY ms DESC, seq DESC LIMIT ?",
            (sid, *upto, count),
        )
        return _bounded(((ms, seq), term, data) for ms, seq, term, data in cursor)[::-1]

    def term_at(self, sid: str, entry_id: Id) -> int | None:
        """The term of the entry `entry_id` (0 for the id before every entry), if the log holds it."""
        if entry_id == ZERO:
            return 0
        row = self._db.execute(
            "SELECT term FROM entries WHERE sid = ? AND ms = ? AND seq = ?", (sid, *entry_id)
        ).fetchone()
        return row[0] if row else None

    def restamp(self, state: State, after: Id, term: int) -> None:
        """Give the entries above `after` the term `term` (a new primary's, for the entries it takes on)."""
        if state.last <= after:
            return
        with self._transaction(state):
            self._db.execute(
                "UPDATE entries SET term = ? WHERE sid = ? AND (ms, seq) > (?, ?)", (term, state.sid, *after)
            )
            state.last_term = term
            self.save(state)

    def first(self, sid: str) -> Row | None:
        rows = self.rows_after(sid, ZERO, 1)
        return rows[0] if rows else None

    def _count(self, sid: str, condition: str, entry_id: Id) -> tuple[int, int]:
        count, size = self._db.execute(
            f"SELECT count(*), coalesce(sum(length(data)), 0) FROM entries WHERE sid = ? AND (ms, seq) {condition}",
            (sid, *entry_id),
        ).fetchone()
        return count, size

    def _trim(self, state: State) -> None:
        """Delete the oldest entries beyond the stream's retention (within the caller's transaction)."""
        retention = retention_of(state.meta)
        if not retention.any or state.length == 0:
            return
        cut: Id | None = None
        if retention.max_age is not None:
            oldest_kept = now_ms() - int(retention.max_age * 1000)
            row = self._db.execute(
                "SELECT ms, seq FROM entries WHERE sid = ? AND ms < ? ORDER BY ms DESC, seq DESC LIMIT 1",
                (state.sid, oldest_kept),
            ).fetchone()
            cut = tuple(row) if row else None
        if retention.max_len is not None and state.length > retention.max_len:
            row = self._db.execute(
                "SELECT ms, seq FROM entries WHERE sid = ? ORDER BY ms, seq LIMIT 1 OFFSET ?",
                (state.sid, state.length - retention.max_len - 1),
            ).fetchone()
            cut = max(cut or ZERO, tuple(row))
        if retention.max_bytes is not None and state.bytes > retention.max_bytes:
            cut = max(cut or ZERO, self._bytes_cut(state, retention.max_bytes))
        if cut is not None:
            self._delete_upto(state, cut)

    def _bytes_cut(self, state: State, max_bytes: int) -> Id:
        excess = state.bytes - max_bytes
        cursor = self._db.execute(
            "SELECT ms, seq, length(data) FROM entries WHERE sid = ? ORDER BY ms, seq", (state.sid,)
        )
        for ms, seq, size in cursor:
            excess -= size
            if excess <= 0:
                cursor.close()
                return ms, seq
        return state.last

    def _delete_upto(self, state: State, cut: Id) -> None:
        count, size = self._count(state.sid, "<= (?, ?)", cut)
        self._db.execute("DELETE FROM entries WHERE sid = ? AND (ms, seq) <= (?, ?)", (state.sid, *cut))
        state.length -= count
        state.bytes -= size
        state.max_deleted = max(state.max_deleted, cut)

    def _transaction(self, state: State) -> "_Transaction":
        return _Transaction(self._db, state)


def _bounded(rows: Iterator[Row]) -> list[Row]:
    """The rows up to `MAX_ANSWER_BYTES` of data (the first one whatever its size)."""
    taken: list[Row] = []
    size = 0
    for row in rows:
        size += len(row[2])
        if taken and size > MAX_ANSWER_BYTES:
            break
        taken.append(row)
    return taken


class _Transaction:
    """BEGIN ... COMMIT (ROLLBACK on an error) on a connection in autocommit mode; a rollback also undoes
    what the transaction changed of the stream's state in memory, so memory never leads the disk."""

    def __init__(self, db: sqlite3.Connection, state: State) -> None:
        self._db = db
        self._state = state
        self._before = copy.copy(state)

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type | None, *_: object) -> None:
        if kind is None:
            self._db.execute("COMMIT")
            return
        self._state.__dict__.update(self._before.__dict__)
        self._db.execute("ROLLBACK")
