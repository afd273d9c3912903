"""The node's value store: every value it holds, the puts it keeps re-announcing, and the quotas.

A put is committed before it is acknowledged, so a node killed with SIGKILL still has every value it
acknowledged (WAL, synchronous=NORMAL: a committed transaction survives the process, if not the OS).
Expiry times are wall-clock seconds, so they mean the same after a restart.
"""

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from dhtmesh.node.values.policy import Verdict, judge_update
from dhtmesh.node.values.value import Value, value_from_wire

LOCAL_ORIGIN = "local"
ROW_OVERHEAD = 64  # bytes charged per value beyond its payload, for keys and bookkeeping

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vals (
    key BLOB NOT NULL, owner BLOB NOT NULL, vid INTEGER NOT NULL, seq INTEGER NOT NULL,
    type INTEGER NOT NULL, data BLOB NOT NULL, sig BLOB NOT NULL, utype TEXT NOT NULL, recipient BLOB NOT NULL,
    expires REAL NOT NULL, origin TEXT NOT NULL, stored_at REAL NOT NULL, charge INTEGER NOT NULL,
    PRIMARY KEY (key, owner, vid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vals_expires ON vals (expires);
CREATE TABLE IF NOT EXISTS announces (
    key BLOB NOT NULL, owner BLOB NOT NULL, vid INTEGER NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (key, owner, vid)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Quotas:
    """OpenDHT's defaults: 64 MiB stored for others, each peer at most 1/8 of it; a cap per key."""

    max_remote_bytes: int = 64 * 1024 * 1024
    max_local_bytes: int = 64 * 1024 * 1024
    max_values_per_key: int = 1024
    peer_share: float = 1 / 8


def _sql_id(value_id: int) -> int:
    return value_id - (1 << 64) if value_id >= 1 << 63 else value_id


def _py_id(sql_id: int) -> int:
    return sql_id + (1 << 64) if sql_id < 0 else sql_id


def _row_value(row: tuple) -> Value:
    owner, vid, seq, value_type, data, sig, utype, recipient = row
    return Value(_py_id(vid), data, value_type, owner, seq, sig, utype, recipient)


_VALUE_COLUMNS = "owner, vid, seq, type, data, sig, utype, recipient"


class ValueStore:
    def __init__(
        self,
        path: Path | None,
        quotas: Quotas | None = None,
        may_follow: Callable[[Value, Value], bool] = lambda current, incoming: True,
    ) -> None:
        self.quotas = quotas or Quotas()
        self._may_follow = may_follow  # whether a newer version may replace the current one (record rules)
        self._db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Bytes and values per origin, kept in memory so that quotas and `counts()` never scan the table.
        self._charges: Counter[str] = Counter()
        self._values: Counter[str] = Counter()
        self.remote_bytes = 0  # the sum of the charges of every origin but this node
        for origin, charge, count in self._db.execute("SELECT origin, SUM(charge), COUNT(*) FROM vals GROUP BY origin"):
            self._account(origin, charge, count)

    def close(self) -> None:
        self._db.close()

    # ---- writes -------------------------------------------------------------------------------

    def put(self, key: bytes, value: Value, *, origin: str, ttl: float) -> Verdict:
        """Store `value` (already checked) under `key` if policy and quotas allow; never raises for a
        refused value."""
        # One read serves the policy (the current version, who else holds this id) and the quotas.
        same_id = self._db.execute(
            f"SELECT {_VALUE_COLUMNS}, origin, charge FROM vals WHERE key=? AND vid=?", (key, _sql_id(value.id))
        ).fetchall()
        mine = next((row for row in same_id if row[0] == value.owner), None)
        current = _row_value(mine[:8]) if mine else None
        verdict = judge_update(current, value, {row[0] for row in same_id})
        if not verdict.accepted:
            return verdict
        if verdict is Verdict.UPDATE and current is not None and not self._may_follow(current, value):
            return Verdict.REFUSE_NOT_SUCCESSOR
        expires = time.time() + ttl
        if verdict is Verdict.REFRESH:
            self._db.execute(
                "UPDATE vals SET expires = MAX(expires, ?) WHERE key=? AND owner=? AND vid=?",
                (expires, key, value.owner, _sql_id(value.id)),
            )
            return verdict
        if verdict is Verdict.NEW and self._count(key) >= self.quotas.max_values_per_key:
            return Verdict.REFUSE_KEY_FULL
        charge = value.size + ROW_OVERHEAD
        old = (mine[8], mine[9]) if mine else None
        refusal = self._quota_refusal(origin, charge, old)
        if refusal is not None:
            return refusal
        self._db.execute(
            "INSERT OR REPLACE INTO vals VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (key, value.owner, _sql_id(value.id), value.seq, value.type, value.data, value.sig, value.utype,
             value.to, expires, origin, time.time(), charge),
        )
        if old:
            self._account(old[0], -old[1], -1)
        self._account(origin, charge, 1)
        return verdict

    def _account(self, origin: str, charge: int, count: int) -> None:
        self._charges[origin] += charge
        self._values[origin] += count
        if origin != LOCAL_ORIGIN:
            self.remote_bytes += charge
        if not self._values[origin]:
            del self._charges[origin], self._values[origin]  # origins come and go: keep only live ones

    def _quota_refusal(self, origin: str, charge: int, old: tuple[str, int] | None) -> Verdict | None:
        """Whether charging `charge` to `origin` (releasing the replaced row's charge) breaks a quota."""
        old_origin, old_charge = old if old else ("", 0)
        growth = charge - (old_charge if old_origin == origin else 0)
        if origin == LOCAL_ORIGIN:
            if self._charges[LOCAL_ORIGIN] + growth > self.quotas.max_local_bytes:
                return Verdict.REFUSE_STORE_FULL
            return None
        released = old_charge if old and old_origin != LOCAL_ORIGIN else 0
        if self.remote_bytes + charge - released > self.quotas.max_remote_bytes:
            return Verdict.REFUSE_STORE_FULL
        if self._charges[origin] + growth > self.quotas.max_remote_bytes * self.quotas.peer_share:
            return Verdict.REFUSE_PEER_QUOTA
        return None

    def _count(self, key: bytes) -> int:
        return self._db.execute("SELECT COUNT(*) FROM vals WHERE key=?", (key,)).fetchone()[0]

    def expire(self, now: float | None = None) -> list[tuple[bytes, Value]]:
        """Remove and return every value whose time is up."""
        now = time.time() if now is None else now
        rows = self._db.execute(
            f"SELECT key, {_VALUE_COLUMNS}, origin, charge FROM vals WHERE expires <= ?", (now,)
        ).fetchall()
        if rows:
            self._db.execute("DELETE FROM vals WHERE expires <= ?", (now,))
        for row in rows:
            self._account(row[9], -row[10], -1)
        return [(row[0], _row_value(row[1:9])) for row in rows]

    # ---- reads --------------------------------------------------------------------------------

    def get(self, key: bytes) -> list[Value]:
        rows = self._db.execute(f"SELECT {_VALUE_COLUMNS} FROM vals WHERE key=? ORDER BY owner, vid", (key,))
        return [_row_value(row) for row in rows]

    def values_from(self, key: bytes, offset: int, limit: int) -> list[Value]:
        """Up to `limit` values under `key` from position `offset`, in a stable order (for paging)."""
        rows = self._db.execute(
            f"SELECT {_VALUE_COLUMNS} FROM vals WHERE key=? ORDER BY owner, vid LIMIT ? OFFSET ?", (key, limit, offset)
        )
        return [_row_value(row) for row in rows]

    def values_with_id(self, key: bytes, value_id: int) -> list[Value]:
        """The values under `key` with this id: at most one, as an id belongs to one owner per key."""
        rows = self._db.execute(
            f"SELECT {_VALUE_COLUMNS} FROM vals WHERE key=? AND vid=? ORDER BY owner", (key, _sql_id(value_id))
        )
        return [_row_value(row) for row in rows]

    def versions(self, key: bytes) -> dict[tuple[bytes, int], int]:
        """(owner, id) → seq of every value under `key`: what a replica compares to find gaps."""
        rows = self._db.execute("SELECT owner, vid, seq FROM vals WHERE key=?", (key,))
        return {(owner, _py_id(vid)): seq for owner, vid, seq in rows}

    def get_one(self, key: bytes, owner: bytes, value_id: int) -> Value | None:
        row = self._db.execute(
            f"SELECT {_VALUE_COLUMNS} FROM vals WHERE key=? AND owner=? AND vid=?", (key, owner, _sql_id(value_id))
        ).fetchone()
        return _row_value(row) if row else None

    def remaining_ttl(self, key: bytes, value: Value) -> float:
        row = self._db.execute(
            "SELECT expires FROM vals WHERE key=? AND owner=? AND vid=?", (key, value.owner, _sql_id(value.id))
        ).fetchone()
        return max(0.0, row[0] - time.time()) if row else 0.0

    def latest_unsigned(self, key: bytes) -> Value | None:
        row = self._db.execute(
            f"SELECT {_VALUE_COLUMNS} FROM vals WHERE key=? AND owner=X'' ORDER BY stored_at DESC LIMIT 1", (key,)
        ).fetchone()
        return _row_value(row) if row else None

    def keys(self) -> list[bytes]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT key FROM vals")]

    def counts(self) -> dict[str, int]:
        return {
            "storage_values": sum(self._values.values()),
            "storage_size": sum(self._charges.values()),
            "local_storage_values": self._values[LOCAL_ORIGIN],
            "local_storage_size": self._charges[LOCAL_ORIGIN],
        }

    # ---- permanent puts this node keeps alive -------------------------------------------------

    def add_announce(self, key: bytes, value: Value) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO announces VALUES (?,?,?,?)",
            (key, value.owner, _sql_id(value.id), msgpack.packb(value.to_wire(), use_bin_type=True)),
        )

    def remove_announce(self, key: bytes, value_id: int) -> bool:
        cursor = self._db.execute("DELETE FROM announces WHERE key=? AND vid=?", (key, _sql_id(value_id)))
        return cursor.rowcount > 0

    def announces(self) -> list[tuple[bytes, Value]]:
        rows = self._db.execute("SELECT key, value FROM announces").fetchall()
        return [(key, value_from_wire(msgpack.unpackb(blob, raw=False))) for key, blob in rows]
