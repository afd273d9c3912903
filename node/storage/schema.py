"""The value store's SQLite tables, how a store written by an older version is brought up to date, and
how a row reads back as a `Value` (SQLite's signed 64-bit integers hold the unsigned value ids)."""

import sqlite3
from pathlib import Path

from dhtmesh.node.values.value import Value

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

VALUE_COLUMNS = "owner, vid, seq, type, data, sig, utype, recipient"


def open_database(path: Path | None) -> sqlite3.Connection:
    """The store's database at `path` (in memory without one), its tables made and brought up to date."""
    db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    _migrate(db)
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """A store from before storers were kept: its values may be refreshed by their owners only. One
    from before permanent puts could end: they are kept until cancelled (9e999 reads as infinity).
    One from before permanent puts had a client: they are the node's own, which no client cancels."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(vals)")}
    if "storer" not in columns:
        db.execute("ALTER TABLE vals ADD COLUMN storer BLOB NOT NULL DEFAULT x''")
    announce_columns = {row[1] for row in db.execute("PRAGMA table_info(announces)")}
    if "until" not in announce_columns:
        db.execute("ALTER TABLE announces ADD COLUMN until REAL NOT NULL DEFAULT 9e999")
    if "client" not in announce_columns:
        db.execute("ALTER TABLE announces ADD COLUMN client TEXT NOT NULL DEFAULT ''")


def sql_id(value_id: int) -> int:
    """A value id (unsigned 64 bits) as SQLite stores it (signed)."""
    return value_id - (1 << 64) if value_id >= 1 << 63 else value_id


def py_id(stored: int) -> int:
    """A value id as SQLite stored it, back to the unsigned id."""
    return stored + (1 << 64) if stored < 0 else stored


def row_value(row: tuple) -> Value:
    """A value from its `VALUE_COLUMNS`."""
    owner, vid, seq, value_type, data, sig, utype, recipient = row
    return Value(py_id(vid), data, value_type, owner, seq, sig, utype, recipient)
