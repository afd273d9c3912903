"""Tombstones of expired values: a value that expired here is remembered (its seq and storer) for as long
as it was held, within its type's lifetime, so that only someone who may refresh it can put it back; the
tombstones are charged to no one, so their number is capped, the oldest ending first."""

import sqlite3

from dhtmesh.node.values.types import expiry_for


def tomb_of(db: sqlite3.Connection, key: bytes, owner: bytes, vid: int, now: float) -> tuple[int, bytes] | None:
    """The (seq, storer) of the expired value `(owner, vid)` under `key`, while its tombstone lasts."""
    return db.execute(
        "SELECT seq, storer FROM tombs WHERE key=? AND owner=? AND vid=? AND until > ?", (key, owner, vid, now)
    ).fetchone()


def bury(db: sqlite3.Connection, rows: list[tuple], now: float, max_tombstones: int) -> None:
    """Tombstones of expired values, each for as long as its value was held (a value stored for a second
    leaves a tombstone for a second), within the type's lifetime and the cap. A row is the expired
    value's key, its columns, origin, charge, storer and how long it was held."""
    db.executemany(
        "INSERT OR REPLACE INTO tombs VALUES (?,?,?,?,?,?)",
        [(row[0], row[1], row[2], row[3], row[11], now + min(row[12], expiry_for(row[4]))) for row in rows],
    )
    excess = db.execute("SELECT COUNT(*) FROM tombs").fetchone()[0] - max_tombstones
    if excess > 0:
        db.execute(
            "DELETE FROM tombs WHERE (key, owner, vid) IN (SELECT key, owner, vid FROM tombs ORDER BY until LIMIT ?)",
            (excess,),
        )


def drop_ended(db: sqlite3.Connection, now: float) -> None:
    """Forget the tombstones whose time is up."""
    db.execute("DELETE FROM tombs WHERE until <= ?", (now,))
