"""The node's value store: every value it holds, the puts it keeps re-announcing, and the quotas.

A put is committed before it is acknowledged, so a node killed with SIGKILL still has every value it
acknowledged (WAL, synchronous=NORMAL: a committed transaction survives the process, if not the OS).
Expiry times are wall-clock seconds, so they mean the same after a restart.

Who may keep a value alive is part of what is stored: a value's *storer* (the proven peer that first
gave it to this node, or the peer a hand-off names) and its owner may refresh it; a stranger re-sending
the same bytes is told the value is `HELD`, and its expiry stays (else anyone could keep anything
alive, a cancelled permanent put included). A value that expired leaves a tombstone for as long as it
was held here (at most a lifetime of its type), so a stranger cannot put it back either; the
tombstones are capped in number, the oldest ending first. Unsigned values may fill half of a key at
most, so that signed values always have room. Quotas are charged per origin: a peer host
(`netgroup.host_of`), this node's own puts (`LOCAL_ORIGIN`), or a stock peer's host (`stock_origin`),
stock peers sharing one small budget since they never prove their address. A disk that fails or fills is a refusal
(`Verdict.REFUSE_DISK_FULL`, `REFUSE_STORAGE_ERROR`), logged once, never an exception: reads go on.

`ValueStore` is the one entry point; its tables (`schema`), quotas and charges (`quotas`), tombstones
(`tombs`) and permanent puts (`announces`) are modules of their own.
"""

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.node.storage.announces import Announces
from dhtmesh.node.storage.quotas import (
    LOCAL_ORIGIN,
    ROW_OVERHEAD,
    STOCK_PREFIX,
    Ledger,
    Quotas,
    stock_origin,
    stock_sender,
)
from dhtmesh.node.storage.schema import VALUE_COLUMNS, open_database, py_id, row_value, sql_id
from dhtmesh.node.storage.tombs import bury, drop_ended, tomb_of
from dhtmesh.node.values.policy import Verdict, judge_update
from dhtmesh.node.values.value import Value

# What callers import from here (the node, the stock RPCs, the tests), wherever it is defined.
__all__ = ["LOCAL_ORIGIN", "ROW_OVERHEAD", "Quotas", "ValueStore", "stock_origin", "stock_sender"]

log = logging.getLogger(__name__)

# A key's values in the primary key's own order, signed ones first (a page of unsigned values never
# hides a signed one), as two ranges: an ORDER BY that is not the key's order makes SQLite read and
# sort every value of the key, data included, for each page. A page is found in the narrow
# `vals_order` index (its offset walks ids, not 64 KiB rows) and only its own rows are read; one id
# is found through `vals_id`, not by reading the key's rows (30 KB values made either cost ms).
_SIGNED = "owner > X''"
_UNSIGNED = "owner = X''"


def _owner_id(value: Value) -> bytes:
    return node_id_from_public_key(value.owner) if value.signed else b""


class ValueStore:
    def __init__(
        self,
        path: Path | None,
        quotas: Quotas | None = None,
        may_follow: Callable[[Value, Value], bool] = lambda current, incoming: True,
        open_refresh: Callable[[Value], bool] = lambda value: False,
        per_host: Callable[[Value], int | None] = lambda value: None,
    ) -> None:
        self.quotas = quotas or Quotas()
        self._may_follow = may_follow  # whether a newer version may replace the current one (record rules)
        self._open_refresh = open_refresh  # values anyone may refresh (self-proving records)
        self._per_host = per_host  # a kind's own cap on its values from one host under one key
        self._db = open_database(path)
        self._failing = False
        self._ledger = Ledger(self.quotas)
        for origin, charge, count in self._db.execute("SELECT origin, SUM(charge), COUNT(*) FROM vals GROUP BY origin"):
            self._ledger.account(origin, charge, count)
        self._announces = Announces(self._db, self.quotas, self._failed)

    def close(self) -> None:
        self._db.close()

    @property
    def remote_bytes(self) -> int:
        """Bytes held for others (every origin but this node)."""
        return self._ledger.remote_bytes

    @property
    def rules_version(self) -> int:
        """The version of the record rules the values here were last checked against."""
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    @rules_version.setter
    def rules_version(self, version: int) -> None:
        self._db.execute(f"PRAGMA user_version = {int(version)}")

    def purge(self, keep: Callable[[bytes, Value], bool]) -> int:
        """Delete every value `keep` refuses (rules that changed since it was stored); returns how many."""
        doomed = [
            row
            for row in self._db.execute(f"SELECT key, {VALUE_COLUMNS}, origin, charge FROM vals").fetchall()
            if not keep(row[0], row_value(row[1:9]))
        ]
        for row in doomed:
            self._db.execute("DELETE FROM vals WHERE key=? AND owner=? AND vid=?", (row[0], row[1], row[2]))
            self._ledger.account(row[9], -row[10], -1)
        return len(doomed)

    # ---- writes -------------------------------------------------------------------------------

    def put(
        self, key: bytes, value: Value, *, origin: str, ttl: float, sender: bytes = b"", by: bytes | None = None
    ) -> Verdict:
        """Store `value` (already checked) under `key` if policy and quotas allow; never raises for a
        refused value, nor for a disk that fails. `sender` is the proven peer that sends it (empty for
        this node's own puts and for stock peers); a new value records it as its storer, or the storer
        `by` names (a hand-off passing on who stored it first). The storer and the value's owner may
        refresh it later, and put it back once expired; others may not."""
        try:
            verdict = self._put(key, value, origin, ttl, sender, sender if by is None else by)
        except sqlite3.OperationalError as error:  # the disk: full, failing, read-only
            return self._failed(error)
        self._writes_again()
        return verdict

    def _put(self, key: bytes, value: Value, origin: str, ttl: float, sender: bytes, storer: bytes) -> Verdict:
        # One read serves the policy (the current version, who else holds this id) and the quotas.
        same_id = self._db.execute(
            f"SELECT {VALUE_COLUMNS}, origin, charge, storer FROM vals INDEXED BY vals_id WHERE key=? AND vid=?",
            (key, sql_id(value.id)),
        ).fetchall()
        mine = next((row for row in same_id if row[0] == value.owner), None)
        current = row_value(mine[:8]) if mine else None
        verdict = judge_update(current, value, {row[0] for row in same_id})
        if not verdict.accepted:
            return verdict
        if verdict is Verdict.UPDATE and current is not None and not self._may_follow(current, value):
            return Verdict.REFUSE_NOT_SUCCESSOR
        expires = time.time() + ttl
        if verdict is Verdict.REFRESH:
            assert mine is not None
            if not self._may_refresh(value, origin, sender, mine[10]):
                return Verdict.HELD
            self._db.execute(
                "UPDATE vals SET expires = MAX(expires, ?) WHERE key=? AND owner=? AND vid=?",
                (expires, key, value.owner, sql_id(value.id)),
            )
            return verdict
        if verdict is Verdict.NEW:
            refusal = self._new_value_refusal(key, value, origin, sender)
            if refusal is not None:
                return refusal
        charge = value.size + ROW_OVERHEAD
        old = (mine[8], mine[9]) if mine else None
        refusal = self._ledger.refusal(origin, charge, old)
        if refusal is not None:
            return refusal
        self._db.execute(
            "INSERT OR REPLACE INTO vals VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                value.owner,
                sql_id(value.id),
                value.seq,
                value.type,
                value.data,
                value.sig,
                value.utype,
                value.to,
                expires,
                origin,
                time.time(),
                charge,
                storer,
            ),
        )
        if old:
            self._ledger.account(old[0], -old[1], -1)
        self._ledger.account(origin, charge, 1)
        return verdict

    def _may_refresh(self, value: Value, origin: str, sender: bytes, storer: bytes) -> bool:
        """Whether this sender may push a held value's expiry back: this node itself, the peer that
        stored it here, its owner, or anyone for a value its rules let anyone keep alive."""
        if origin == LOCAL_ORIGIN or self._open_refresh(value):
            return True
        return bool(sender) and sender in (storer, _owner_id(value))

    def _new_value_refusal(self, key: bytes, value: Value, origin: str, sender: bytes) -> Verdict | None:
        """Whether a value new to this key must be refused: a version that expired here, put back by
        someone who may not refresh it; a full key (or its unsigned half); a key whose share for this
        origin is used up."""
        tomb = tomb_of(self._db, key, value.owner, sql_id(value.id), time.time())
        if tomb is not None and value.seq <= tomb[0] and not self._may_refresh(value, origin, sender, tomb[1]):
            return Verdict.REFUSE_EXPIRED
        stock = origin.startswith(STOCK_PREFIX)
        count, from_origin, unsigned = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN ? THEN origin LIKE ? ELSE origin = ? END), 0), "
            "COALESCE(SUM(owner = X''), 0) FROM vals WHERE key=?",
            (stock, STOCK_PREFIX + "%", origin, key),
        ).fetchone()
        if count >= self.quotas.max_values_per_key:
            return Verdict.REFUSE_KEY_FULL
        if not value.signed and unsigned >= self.quotas.max_values_per_key // 2:
            return Verdict.REFUSE_KEY_FULL
        share = self._per_host(value) or self.quotas.max_values_per_key * self.quotas.key_share
        if origin != LOCAL_ORIGIN and from_origin >= share:
            return Verdict.REFUSE_KEY_SHARE
        return None

    def expire(self, now: float | None = None) -> list[tuple[bytes, Value]]:
        """Remove and return every value whose time is up; each leaves a tombstone."""
        now = time.time() if now is None else now
        try:
            rows = self._db.execute(
                f"SELECT key, {VALUE_COLUMNS}, origin, charge, storer, expires - stored_at FROM vals "
                "WHERE expires <= ?",
                (now,),
            ).fetchall()
            if rows:
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM vals WHERE expires <= ?", (now,))
                bury(self._db, rows, now, self.quotas.max_tombstones)
                self._db.execute("COMMIT")
            drop_ended(self._db, now)
        except sqlite3.OperationalError as error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._failed(error)
            return []
        for row in rows:
            self._ledger.account(row[9], -row[10], -1)
        return [(row[0], row_value(row[1:9])) for row in rows]

    def _failed(self, error: sqlite3.OperationalError) -> Verdict:
        """A write the disk refused: said once at ERROR (a full disk would otherwise log every request)."""
        if not self._failing:
            self._failing = True
            log.error("the value store cannot write (%s); puts are refused until it can", error)
        full = getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        return Verdict.REFUSE_DISK_FULL if full else Verdict.REFUSE_STORAGE_ERROR

    def _writes_again(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("the value store writes again")

    # ---- reads --------------------------------------------------------------------------------

    def get(self, key: bytes, value_type: int | None = None) -> list[Value]:
        """Every value under `key` (of one type, if given), signed ones first, by (owner, id)."""
        return self.values_from(key, 0, -1, value_type)

    def values_from(self, key: bytes, offset: int, limit: int, value_type: int | None = None) -> list[Value]:
        """Up to `limit` (-1: all) values under `key` (of one type, if given) from position `offset`, in a
        stable order that puts signed values first (for paging)."""
        where, params = _where(key, value_type)
        if offset == 0:  # the first page (and every get): no count needed, the signed range says it all
            rows = self._range(where, _SIGNED, params, limit, 0)
            unsigned_offset = 0
        else:
            signed = self._db.execute(f"SELECT COUNT(*) FROM vals WHERE {where} AND {_SIGNED}", params).fetchone()[0]
            rows = self._range(where, _SIGNED, params, limit, offset) if offset < signed else []
            unsigned_offset = max(0, offset - signed)
        if limit < 0 or len(rows) < limit:
            rest = limit - len(rows) if limit >= 0 else -1
            rows += self._range(where, _UNSIGNED, params, rest, unsigned_offset)
        return [row_value(row) for row in rows]

    def _range(self, where: str, owners: str, params: tuple, limit: int, offset: int) -> list:
        if offset == 0:  # nothing to skip: the primary key's own order gives the rows directly
            query = f"SELECT {VALUE_COLUMNS} FROM vals WHERE {where} AND {owners} ORDER BY owner, vid LIMIT ?"
            return self._db.execute(query, (*params, limit)).fetchall()
        page = (
            f"SELECT key, owner, vid FROM vals INDEXED BY vals_order WHERE {where} AND {owners} "
            "ORDER BY owner, vid LIMIT ? OFFSET ?"
        )
        query = f"SELECT {VALUE_COLUMNS} FROM vals WHERE (key, owner, vid) IN ({page}) ORDER BY owner, vid"
        return self._db.execute(query, (*params, limit, offset)).fetchall()

    def values_with_id(self, key: bytes, value_id: int, value_type: int | None = None) -> list[Value]:
        """The values under `key` with this id: at most one, as an id belongs to one owner per key."""
        where, params = _where(key, value_type)
        query = f"SELECT {VALUE_COLUMNS} FROM vals INDEXED BY vals_id WHERE {where} AND vid=?"
        rows = self._db.execute(query, (*params, sql_id(value_id)))
        return [row_value(row) for row in rows]

    def versions(self, key: bytes) -> dict[tuple[bytes, int], int]:
        """(owner, id) → seq of every value under `key`: what a replica compares to find gaps."""
        rows = self._db.execute("SELECT owner, vid, seq FROM vals WHERE key=?", (key,))
        return {(owner, py_id(vid)): seq for owner, vid, seq in rows}

    def get_one(self, key: bytes, owner: bytes, value_id: int) -> Value | None:
        row = self._db.execute(
            f"SELECT {VALUE_COLUMNS} FROM vals WHERE key=? AND owner=? AND vid=?", (key, owner, sql_id(value_id))
        ).fetchone()
        return row_value(row) if row else None

    def storer_of(self, key: bytes, value: Value) -> bytes:
        """Who stored `value` here (empty for this node's own and stock peers' values): what a hand-off
        passes on, so that the same peer may keep refreshing the copy it lands on."""
        row = self._db.execute(
            "SELECT storer FROM vals WHERE key=? AND owner=? AND vid=?", (key, value.owner, sql_id(value.id))
        ).fetchone()
        return row[0] if row else b""

    def remaining_ttl(self, key: bytes, value: Value) -> float:
        row = self._db.execute(
            "SELECT expires FROM vals WHERE key=? AND owner=? AND vid=?", (key, value.owner, sql_id(value.id))
        ).fetchone()
        return max(0.0, row[0] - time.time()) if row else 0.0

    def latest_unsigned(self, key: bytes) -> Value | None:
        row = self._db.execute(
            f"SELECT {VALUE_COLUMNS} FROM vals WHERE key=? AND owner=X'' ORDER BY stored_at DESC LIMIT 1", (key,)
        ).fetchone()
        return row_value(row) if row else None

    def keys(self) -> list[bytes]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT key FROM vals")]

    def counts(self) -> dict[str, int]:
        return self._ledger.counts()

    # ---- permanent puts this node keeps alive -------------------------------------------------

    def add_announce(self, key: bytes, value: Value, until: float = math.inf, client: str = "") -> bool:
        """See `Announces.add`."""
        return self._announces.add(key, value, until, client)

    def announce_refusal(self, key: bytes, value: Value, client: str) -> Verdict | None:
        """See `Announces.refusal`."""
        return self._announces.refusal(key, value, client)

    def remove_announce(self, key: bytes, value_id: int, client: str | None = None) -> bool:
        """See `Announces.remove`."""
        return self._announces.remove(key, value_id, client)

    def announces(self, key: bytes | None = None, client: str | None = None) -> list[tuple[bytes, Value]]:
        """See `Announces.listed`."""
        return self._announces.listed(key, client)

    def drop_lapsed_announces(self) -> int:
        """See `Announces.drop_lapsed`."""
        return self._announces.drop_lapsed()


def _where(key: bytes, value_type: int | None) -> tuple[str, tuple]:
    return ("key=?", (key,)) if value_type is None else ("key=? AND type=?", (key, value_type))
