"""Consumer groups of the streams a node is primary of: each group's cursor (entries up to it were
delivered) and its pending entries (id -> consumer, delivery time, deliveries), kept in the log's
SQLite file, one row per group, and replicated to the other homes as that row (`Group.to_wire`).

An entry goes to one consumer; if it is not acked within `ack_wait` it is delivered again, to the
consumer reading next (one other than its last, first). A group's pending entries are bounded
(`MAX_PENDING`): past it, a read delivers no new entries until some are acked or redelivered.
"""

import sqlite3
import time
from dataclasses import dataclass, field

import orjson

from dhtmesh.node.streams.errors import BadStreamRequest
from dhtmesh.node.streams.ids import ZERO, Id

MAX_PENDING = 2_000  # per group: 64 groups' state (~50 bytes a pending entry) fit one replica message
MAX_GROUPS = 64  # per stream
MAX_NAME = 200


@dataclass
class Pending:
    consumer: str
    delivered: float  # unix seconds
    count: int


@dataclass
class Group:
    cursor: Id = ZERO
    pending: dict[Id, Pending] = field(default_factory=dict)

    def to_wire(self) -> bytes:
        return orjson.dumps(
            [list(self.cursor), [[*entry_id, p.consumer, p.delivered, p.count] for entry_id, p in self.pending.items()]]
        )

    @classmethod
    def from_wire(cls, blob: bytes) -> "Group":
        cursor, pending = orjson.loads(blob)
        return cls(tuple(cursor), {(ms, seq): Pending(c, d, n) for ms, seq, c, d, n in pending})

    def due(self, consumer: str, count: int, ack_wait: float, now: float) -> list[Id]:
        """Up to `count` pending ids not acked within `ack_wait`: another consumer's first, then oldest."""
        late = [
            (p.consumer == consumer, entry_id) for entry_id, p in self.pending.items() if p.delivered + ack_wait <= now
        ]
        return [entry_id for _, entry_id in sorted(late)[:count]]

    def deliver(self, ids: list[Id], consumer: str, now: float) -> None:
        for entry_id in ids:
            known = self.pending.get(entry_id)
            self.pending[entry_id] = Pending(consumer, now, 1 if known is None else known.count + 1)

    def forget_before(self, oldest: Id) -> None:
        """Drop pending entries retention deleted: they can no longer be delivered."""
        for entry_id in [entry_id for entry_id in self.pending if entry_id < oldest]:
            del self.pending[entry_id]


def check_name(name: object, noun: str) -> str:
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME):
        raise BadStreamRequest(f"a {noun} name is 1 to {MAX_NAME} characters")
    return name


class Groups:
    """The groups of every stream, in the log's database (its `groups` table)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._groups: dict[tuple[str, str], Group] = {
            (sid, name): Group.from_wire(blob) for sid, name, blob in db.execute("SELECT sid, name, state FROM groups")
        }

    def count(self, sid: str) -> int:
        return sum(1 for key in self._groups if key[0] == sid)

    def of(self, sid: str) -> dict[str, bytes]:
        return {name: group.to_wire() for (s, name), group in self._groups.items() if s == sid}

    def get(self, sid: str, name: str) -> Group:
        group = self._groups.get((sid, name))
        if group is None:
            if self.count(sid) >= MAX_GROUPS:
                raise BadStreamRequest(f"a stream has at most {MAX_GROUPS} groups")
            group = self._groups[(sid, name)] = Group()
        return group

    def save(self, sid: str, name: str) -> bytes:
        blob = self._groups[(sid, name)].to_wire()
        self._db.execute("INSERT OR REPLACE INTO groups VALUES (?, ?, ?)", (sid, name, blob))
        return blob

    def put(self, sid: str, name: str, blob: bytes) -> None:
        """A group's state as the primary replicated it."""
        self._groups[(sid, name)] = Group.from_wire(blob)
        self._db.execute("INSERT OR REPLACE INTO groups VALUES (?, ?, ?)", (sid, name, blob))

    def drop(self, sid: str) -> None:
        for key in [key for key in self._groups if key[0] == sid]:
            del self._groups[key]
        self._db.execute("DELETE FROM groups WHERE sid = ?", (sid,))


def now() -> float:
    return time.time()
