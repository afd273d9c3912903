"""The permanent puts a node keeps re-announcing (its own, and its proxy clients' until they lapse),
stored beside the values so that they survive a restart, with the cap on how many a client may keep."""

import math
import sqlite3
import time
from collections.abc import Callable

import msgpack

from dhtmesh.node.storage.quotas import Quotas
from dhtmesh.node.storage.schema import sql_id
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.value import Value, value_from_wire


class Announces:
    """The `announces` table. `failed` is told of a write the disk refused (the store logs it once)."""

    def __init__(
        self, db: sqlite3.Connection, quotas: Quotas, failed: Callable[[sqlite3.OperationalError], Verdict]
    ) -> None:
        self._db = db
        self._quotas = quotas
        self._failed = failed

    def add(self, key: bytes, value: Value, until: float = math.inf, client: str = "") -> bool:
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
                (key, value.owner, sql_id(value.id), wire, until, client),
            )
        except sqlite3.OperationalError as error:
            self._failed(error)
            return False
        return True

    def refusal(self, key: bytes, value: Value, client: str) -> Verdict | None:
        """Whether `client` may not have one more permanent put (one it makes again is not one more)."""
        now = time.time()
        if not client or self._db.execute(
            "SELECT 1 FROM announces WHERE key=? AND owner=? AND vid=? AND until > ?",
            (key, value.owner, sql_id(value.id), now),
        ).fetchone():
            return None
        clients, mine = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(client = ?), 0) FROM announces WHERE client != '' AND until > ?",
            (client, now),
        ).fetchone()
        if mine >= self._quotas.permanent_puts_per_client or clients >= self._quotas.permanent_puts_of_clients:
            return Verdict.REFUSE_PERMANENT_PUTS
        return None

    def remove(self, key: bytes, value_id: int, client: str | None = None) -> bool:
        """Stop re-announcing the value with this id under `key` (only if it is `client`'s, if given)."""
        where, args = _where(key, client)
        cursor = self._db.execute(f"DELETE FROM announces WHERE {where} AND vid=?", (*args, sql_id(value_id)))
        return cursor.rowcount > 0

    def listed(self, key: bytes | None = None, client: str | None = None) -> list[tuple[bytes, Value]]:
        """The permanent puts (under `key`, of `client`, if given) whose time has not run out."""
        where, args = _where(key, client)
        query = f"SELECT key, value FROM announces WHERE {where} AND until > ?"
        rows = self._db.execute(query, (*args, time.time())).fetchall()
        return [(key, value_from_wire(msgpack.unpackb(blob, raw=False))) for key, blob in rows]

    def drop_lapsed(self) -> int:
        """Forget the permanent puts nobody refreshed in time; returns how many."""
        try:
            return self._db.execute("DELETE FROM announces WHERE until <= ?", (time.time(),)).rowcount
        except sqlite3.OperationalError as error:
            self._failed(error)
            return 0


def _where(key: bytes | None, client: str | None) -> tuple[str, tuple]:
    """The condition on the permanent puts under `key` and of `client` (each if given), with its arguments."""
    given = {column: arg for column, arg in (("key", key), ("client", client)) if arg is not None}
    return " AND ".join([f"{column} = ?" for column in given] or ["1"]), tuple(given.values())
