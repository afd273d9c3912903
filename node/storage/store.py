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
"""

import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.node.values.policy import Verdict, judge_update
from dhtmesh.node.values.types import expiry_for
from dhtmesh.node.values.value import Value, value_from_wire
from dhtmesh.node.wire.netgroup import subnet_of
from dhtmesh.node.wire.ratelimit import tally

log = logging.getLogger(__name__)

LOCAL_ORIGIN = "local"
STOCK_PREFIX = "stock "
ROW_OVERHEAD = 64  # bytes charged per value beyond its payload, for keys and bookkeeping

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vals (
    key BLOB NOT NULL, owner BLOB NOT NULL, vid INTEGER NOT NULL, seq INTEGER NOT NULL,
    type INTEGER NOT NULL, data BLOB NOT NULL, sig BLOB NOT NULL, utype TEXT NOT NULL, recipient BLOB NOT NULL,
    expires REAL NOT NULL, origin TEXT NOT NULL, stored_at REAL NOT NULL, charge INTEGER NOT NULL,
    storer BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (key, owner, vid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vals_expires ON vals (expires);
CREATE INDEX IF NOT EXISTS vals_id ON vals (key, vid);
CREATE INDEX IF NOT EXISTS vals_order ON vals (key, owner, vid);
CREATE TABLE IF NOT EXISTS announces (
    key BLOB NOT NULL, owner BLOB NOT NULL, vid INTEGER NOT NULL, value BLOB NOT NULL,
    until REAL NOT NULL DEFAULT 9e999, client TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (key, owner, vid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombs (
    key BLOB NOT NULL, owner BLOB NOT NULL, vid INTEGER NOT NULL, seq INTEGER NOT NULL,
    storer BLOB NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (key, owner, vid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tombs_until ON tombs (until);
"""


@dataclass(frozen=True, slots=True)
class Quotas:
    """OpenDHT's defaults: 64 MiB stored for others, each peer host at most 1/8 of it and each subnet
    (`netgroup.subnet_of`) 1/4; a cap per key, of which one peer host may fill at most `key_share` (so
    strangers cannot crowd out the others)."""

    max_remote_bytes: int = 64 * 1024 * 1024
    max_local_bytes: int = 64 * 1024 * 1024
    max_values_per_key: int = 1024
    peer_share: float = 1 / 8
    subnet_share: float = 1 / 4
    key_share: float = 1 / 4
    max_tombstones: int = 100_000  # ~10 MB: a tombstone is charged to no one, so their number is capped
    # Permanent puts the node keeps for proxy clients: each is looked at every second and re-announced
    # every few minutes for a day, so one client (an address, as for listen streams) keeps a few, and
    # all of them together a bounded number. The node's own are not counted.
    permanent_puts_per_client: int = 64
    permanent_puts_of_clients: int = 4096


def stock_origin(host: str) -> str:
    """The origin a stock peer's store is charged to (all stock origins share one peer's budget and
    one peer's share of a key: a stock peer's address is never proven, so it could be anyone's)."""
    return STOCK_PREFIX + host


def stock_sender(host: str) -> bytes:
    """Who a stock peer is, for refreshing what it stored: its host (it has no proven id)."""
    return (STOCK_PREFIX + host).encode()


def _sql_id(value_id: int) -> int:
    return value_id - (1 << 64) if value_id >= 1 << 63 else value_id


def _py_id(sql_id: int) -> int:
    return sql_id + (1 << 64) if sql_id < 0 else sql_id


def _row_value(row: tuple) -> Value:
    owner, vid, seq, value_type, data, sig, utype, recipient = row
    return Value(_py_id(vid), data, value_type, owner, seq, sig, utype, recipient)


_VALUE_COLUMNS = "owner, vid, seq, type, data, sig, utype, recipient"
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
        self._db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._failing = False
        # Bytes and values per origin, kept in memory so that quotas and `counts()` never scan the table.
        self._charges: Counter[str] = Counter()
        self._values: Counter[str] = Counter()
        self._subnet_charges: Counter[str] = Counter()  # remote hosts' charges by their subnet
        self.remote_bytes = 0  # the sum of the charges of every origin but this node
        self.stock_bytes = 0  # the part of it stock peers are charged
        for origin, charge, count in self._db.execute("SELECT origin, SUM(charge), COUNT(*) FROM vals GROUP BY origin"):
            self._account(origin, charge, count)

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """A store from before storers were kept: its values may be refreshed by their owners only. One
        from before permanent puts could end: they are kept until cancelled (9e999 reads as infinity).
        One from before permanent puts had a client: they are the node's own, which no client cancels."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(vals)")}
        if "storer" not in columns:
            self._db.execute("ALTER TABLE vals ADD COLUMN storer BLOB NOT NULL DEFAULT x''")
        announce_columns = {row[1] for row in self._db.execute("PRAGMA table_info(announces)")}
        if "until" not in announce_columns:
            self._db.execute("ALTER TABLE announces ADD COLUMN until REAL NOT NULL DEFAULT 9e999")
        if "client" not in announce_columns:
            self._db.execute("ALTER TABLE announces ADD COLUMN client TEXT NOT NULL DEFAULT ''")

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
            for row in self._db.execute(f"SELECT key, {_VALUE_COLUMNS}, origin, charge FROM vals").fetchall()
            if not keep(row[0], _row_value(row[1:9]))
        ]
        for row in doomed:
            self._db.execute("DELETE FROM vals WHERE key=? AND owner=? AND vid=?", (row[0], row[1], row[2]))
            self._account(row[9], -row[10], -1)
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
            f"SELECT {_VALUE_COLUMNS}, origin, charge, storer FROM vals INDEXED BY vals_id WHERE key=? AND vid=?",
            (key, _sql_id(value.id)),
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
            assert mine is not None
            if not self._may_refresh(value, origin, sender, mine[10]):
                return Verdict.HELD
            self._db.execute(
                "UPDATE vals SET expires = MAX(expires, ?) WHERE key=? AND owner=? AND vid=?",
                (expires, key, value.owner, _sql_id(value.id)),
            )
            return verdict
        if verdict is Verdict.NEW:
            refusal = self._new_value_refusal(key, value, origin, sender)
            if refusal is not None:
                return refusal
        charge = value.size + ROW_OVERHEAD
        old = (mine[8], mine[9]) if mine else None
        refusal = self._quota_refusal(origin, charge, old)
        if refusal is not None:
            return refusal
        self._db.execute(
            "INSERT OR REPLACE INTO vals VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                value.owner,
                _sql_id(value.id),
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
            self._account(old[0], -old[1], -1)
        self._account(origin, charge, 1)
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
        tomb = self._db.execute(
            "SELECT seq, storer FROM tombs WHERE key=? AND owner=? AND vid=? AND until > ?",
            (key, value.owner, _sql_id(value.id), time.time()),
        ).fetchone()
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

    def _account(self, origin: str, charge: int, count: int) -> None:
        self._charges[origin] += charge
        self._values[origin] += count
        if origin != LOCAL_ORIGIN:
            self.remote_bytes += charge
        if origin.startswith(STOCK_PREFIX):
            self.stock_bytes += charge
        elif origin != LOCAL_ORIGIN:
            tally(self._subnet_charges, subnet_of(origin), charge)
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
        share = self.quotas.max_remote_bytes * self.quotas.peer_share
        if origin.startswith(STOCK_PREFIX):
            return Verdict.REFUSE_PEER_QUOTA if self.stock_bytes + growth > share else None
        if self._charges[origin] + growth > share:
            return Verdict.REFUSE_PEER_QUOTA
        subnet_share = self.quotas.max_remote_bytes * max(self.quotas.subnet_share, self.quotas.peer_share)
        if self._subnet_charges[subnet_of(origin)] + growth > subnet_share:
            return Verdict.REFUSE_PEER_QUOTA
        return None

    def expire(self, now: float | None = None) -> list[tuple[bytes, Value]]:
        """Remove and return every value whose time is up; each leaves a tombstone."""
        now = time.time() if now is None else now
        try:
            rows = self._db.execute(
                f"SELECT key, {_VALUE_COLUMNS}, origin, charge, storer, expires - stored_at FROM vals "
                "WHERE expires <= ?",
                (now,),
            ).fetchall()
            if rows:
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM vals WHERE expires <= ?", (now,))
                self._bury(rows, now)
                self._db.execute("COMMIT")
            self._db.execute("DELETE FROM tombs WHERE until <= ?", (now,))
        except sqlite3.OperationalError as error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._failed(error)
            return []
        for row in rows:
            self._account(row[9], -row[10], -1)
        return [(row[0], _row_value(row[1:9])) for row in rows]

    def _bury(self, rows: list[tuple], now: float) -> None:
        """Tombstones of expired values, each for as long as its value was held (a value stored
        for a second leaves a tombstone for a second), within the type's lifetime and the cap."""
        self._db.executemany(
            "INSERT OR REPLACE INTO tombs VALUES (?,?,?,?,?,?)",
            [(row[0], row[1], row[2], row[3], row[11], now + min(row[12], expiry_for(row[4]))) for row in rows],
        )
        excess = self._db.execute("SELECT COUNT(*) FROM tombs").fetchone()[0] - self.quotas.max_tombstones
        if excess > 0:
            self._db.execute(
                "DELETE FROM tombs WHERE (key, owner, vid) IN "
                "(SELECT key, owner, vid FROM tombs ORDER BY until LIMIT ?)",
                (excess,),
            )

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
        return [_row_value(row) for row in rows]

    def _range(self, where: str, owners: str, params: tuple, limit: int, offset: int) -> list:
        if offset == 0:  # nothing to skip: the primary key's own order gives the rows directly
            query = f"SELECT {_VALUE_COLUMNS} FROM vals WHERE {where} AND {owners} ORDER BY owner, vid LIMIT ?"
            return self._db.execute(query, (*params, limit)).fetchall()
        page = (
            f"SELECT key, owner, vid FROM vals INDEXED BY vals_order WHERE {where} AND {owners} "
            "ORDER BY owner, vid LIMIT ? OFFSET ?"
        )
        query = f"SELECT {_VALUE_COLUMNS} FROM vals WHERE (key, owner, vid) IN ({page}) ORDER BY owner, vid"
        return self._db.execute(query, (*params, limit, offset)).fetchall()

    def values_with_id(self, key: bytes, value_id: int, value_type: int | None = None) -> list[Value]:
        """The values under `key` with this id: at most one, as an id belongs to one owner per key."""
        where, params = _where(key, value_type)
        query = f"SELECT {_VALUE_COLUMNS} FROM vals INDEXED BY vals_id WHERE {where} AND vid=?"
        rows = self._db.execute(query, (*params, _sql_id(value_id)))
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

    def storer_of(self, key: bytes, value: Value) -> bytes:
        """Who stored `value` here (empty for this node's own and stock peers' values): what a hand-off
        passes on, so that the same peer may keep refreshing the copy it lands on."""
        row = self._db.execute(
            "SELECT storer FROM vals WHERE key=? AND owner=? AND vid=?", (key, value.owner, _sql_id(value.id))
        ).fetchone()
        return row[0] if row else b""

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

    def add_announce(self, key: bytes, value: Value, until: float = math.inf, client: str = "") -> bool:
        """Keep re-announcing `value` until the wall-clock time `until`, or longer if it was kept until
        later already (a client putting the node's own value again must not make it lapse with the
        client's); False if the disk refused to remember it. `client` is the proxy client whose put it
        is (`proxy.clients.client_of`), empty for the node's own: a put stays the client's that made
        it, unless the node makes it its own, so that no client takes over another's or the node's."""
        wire = msgpack.packb(value.to_wire(), use_bin_type=True)
        try:
            self._db.execute(
                "INSERT INTO announces VALUES (?,?,?,?,?,?) ON CONFLICT (key, owner, vid) "
                "DO UPDATE SET value = excluded.value, until = MAX(until, excluded.until), "
                "client = CASE WHEN excluded.client = '' THEN '' ELSE client END",
                (key, value.owner, _sql_id(value.id), wire, until, client),
            )
        except sqlite3.OperationalError as error:
            self._failed(error)
            return False
        return True

    def announce_refusal(self, key: bytes, value: Value, client: str) -> Verdict | None:
        """Whether `client` may not have one more permanent put (one it makes again is not one more)."""
        now = time.time()
        if not client or self._db.execute(
            "SELECT 1 FROM announces WHERE key=? AND owner=? AND vid=? AND until > ?",
            (key, value.owner, _sql_id(value.id), now),
        ).fetchone():
            return None
        clients, mine = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(client = ?), 0) FROM announces WHERE client != '' AND until > ?",
            (client, now),
        ).fetchone()
        if mine >= self.quotas.permanent_puts_per_client or clients >= self.quotas.permanent_puts_of_clients:
            return Verdict.REFUSE_PERMANENT_PUTS
        return None

    def remove_announce(self, key: bytes, value_id: int, client: str | None = None) -> bool:
        """Stop re-announcing the value with this id under `key` (only if it is `client`'s, if given)."""
        where, args = _announce_where(key, client)
        cursor = self._db.execute(f"DELETE FROM announces WHERE {where} AND vid=?", (*args, _sql_id(value_id)))
        return cursor.rowcount > 0

    def announces(self, key: bytes | None = None, client: str | None = None) -> list[tuple[bytes, Value]]:
        """The permanent puts (under `key`, of `client`, if given) whose time has not run out."""
        where, args = _announce_where(key, client)
        query = f"SELECT key, value FROM announces WHERE {where} AND until > ?"
        rows = self._db.execute(query, (*args, time.time())).fetchall()
        return [(key, value_from_wire(msgpack.unpackb(blob, raw=False))) for key, blob in rows]

    def drop_lapsed_announces(self) -> int:
        """Forget the permanent puts nobody refreshed in time; returns how many."""
        try:
            return self._db.execute("DELETE FROM announces WHERE until <= ?", (time.time(),)).rowcount
        except sqlite3.OperationalError as error:
            self._failed(error)
            return 0


def _announce_where(key: bytes | None, client: str | None) -> tuple[str, tuple]:
    """The condition on the permanent puts under `key` and of `client` (each if given), with its arguments."""
    given = {column: arg for column, arg in (("key", key), ("client", client)) if arg is not None}
    return " AND ".join([f"{column} = ?" for column in given] or ["1"]), tuple(given.values())


def _where(key: bytes, value_type: int | None) -> tuple[str, tuple]:
    return ("key=?", (key,)) if value_type is None else ("key=? AND type=?", (key, value_type))
