"""The chunks a farmer holds for the mesh: content-addressed files on disk, named by their Merkle root,
indexed in SQLite with a byte quota.

A chunk arrives pending: it is kept only once the blob it belongs to is published (`keep`), and a
pending chunk older than the upload timeout is dropped (`drop_pending`), so an upload that never
finished leaves nothing behind on its farmers.

A chunk is stored only if its bytes hash to the root it is stored under, so a holder can never be
handed, or hand out, other bytes under a chunk's name without it showing. A write goes to a temporary
file that is synced and renamed into place before the index row commits: a node killed at any moment
restarts with every chunk it acknowledged, and nothing half-written (leftover temporary files and
rows without a file are cleared on open).

Hashing a chunk, writing and syncing it, and reading it run in worker threads (4 MiB costs ~10-30 ms
of hashing or disk), so that a burst of chunks never stalls the event loop the node serves on; the
index stays on the loop's thread (one SQLite connection).
"""

import asyncio
import os
import sqlite3
import time
from pathlib import Path

from dhtmesh.crypto.merkle import BLOCK_SIZE, CHUNK_SIZE, ROOT_SIZE, chunk_root

DEFAULT_CHUNK_QUOTA = 1024 * 1024 * 1024
_PARTIAL = ".partial"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    root BLOB PRIMARY KEY, size INTEGER NOT NULL, stored_at REAL NOT NULL,
    kept_for BLOB  -- the blob this chunk is kept for; NULL while pending
) WITHOUT ROWID;
"""


class ChunkRefused(ValueError):
    """Not stored: the bytes do not hash to the root, the chunk is too big, or the quota is used up."""


class ChunkStore:
    def __init__(self, directory: Path, quota_bytes: int = DEFAULT_CHUNK_QUOTA) -> None:
        self._directory = directory
        self._quota = quota_bytes
        self._writing = asyncio.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(directory / "chunks.sqlite3"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._clear_leftovers()
        self.used_bytes = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM chunks").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def _path(self, root: bytes) -> Path:
        name = root.hex()
        return self._directory / name[:2] / name

    def _migrate(self) -> None:
        """A store from before pending chunks: what it holds was acknowledged, so it is kept."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(chunks)")}
        if "kept_for" not in columns:
            self._db.execute("ALTER TABLE chunks ADD COLUMN kept_for BLOB")
            self._db.execute("UPDATE chunks SET kept_for=?", (bytes(ROOT_SIZE),))

    def _clear_leftovers(self) -> None:
        """Drop what a crash left: temporary files, files never indexed, rows whose file is gone."""
        indexed = {root.hex() for (root,) in self._db.execute("SELECT root FROM chunks")}
        for path in self._directory.glob("*/*"):
            if path.name.endswith(_PARTIAL) or path.name not in indexed:
                path.unlink(missing_ok=True)
        for name in indexed:
            if not self._path(bytes.fromhex(name)).exists():
                self._db.execute("DELETE FROM chunks WHERE root=?", (bytes.fromhex(name),))

    # ---- writes ---------------------------------------------------------------------------------

    async def put(self, root: bytes, data: bytes) -> bool:
        """Store `data` as chunk `root`; False if it was already here. Raises `ChunkRefused`."""
        if len(root) != ROOT_SIZE:
            raise ChunkRefused("a chunk root is 32 bytes")
        if len(data) > CHUNK_SIZE:
            raise ChunkRefused(f"a chunk is at most {CHUNK_SIZE} bytes")
        if self.has(root):
            return False
        self.check_room(len(data))
        if await asyncio.to_thread(chunk_root, data) != root:
            raise ChunkRefused("the bytes do not hash to this chunk's root")
        async with self._writing:  # one write at a time, so that the quota and the index see each in turn
            if self.has(root):
                return False
            self.check_room(len(data))
            await asyncio.to_thread(_write_synced, self._path(root), data)
            try:
                self._db.execute("INSERT INTO chunks VALUES (?, ?, ?, NULL)", (root, len(data), time.time()))
            except sqlite3.OperationalError as error:  # the index's disk is full or failing
                self._path(root).unlink(missing_ok=True)
                raise ChunkRefused(f"this node cannot index the chunk on its disk ({error})") from error
            self.used_bytes += len(data)
        return True

    def check_room(self, size: int) -> None:
        """Raise `ChunkRefused` if `size` more bytes would pass the quota."""
        if self.used_bytes + size > self._quota:
            raise ChunkRefused("the chunk quota is used up")

    def keep(self, root: bytes, blob_id: bytes) -> bool:
        """Keep a pending chunk for good; False if it is not here. A kept chunk stays kept."""
        cursor = self._db.execute("UPDATE chunks SET kept_for=COALESCE(kept_for, ?) WHERE root=?", (blob_id, root))
        return cursor.rowcount > 0

    def drop_pending(self, stored_before: float) -> list[bytes]:
        """Delete the chunks still pending that arrived before `stored_before`; returns their roots."""
        rows = self._db.execute("SELECT root FROM chunks WHERE kept_for IS NULL AND stored_at < ?", (stored_before,))
        roots = [root for (root,) in rows.fetchall()]
        for root in roots:
            self.delete(root)
        return roots

    def delete(self, root: bytes) -> bool:
        row = self._db.execute("SELECT size FROM chunks WHERE root=?", (root,)).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM chunks WHERE root=?", (root,))
        self._path(root).unlink(missing_ok=True)
        self.used_bytes -= row[0]
        return True

    # ---- reads ----------------------------------------------------------------------------------

    def has(self, root: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM chunks WHERE root=?", (root,)).fetchone() is not None

    async def get(self, root: bytes) -> bytes | None:
        """The chunk's bytes as stored (a holder serves them as they are; readers check the root)."""
        if not self.has(root):
            return None
        try:
            return await asyncio.to_thread(self._path(root).read_bytes)
        except FileNotFoundError:
            return None

    async def read_blocks(self, root: bytes, indices: list[int]) -> dict[int, bytes] | None:
        """Blocks `indices` of the chunk as stored, read at their offsets (a proof needs a few of 1,024);
        a block past the end of the file reads short."""
        if not self.has(root):
            return None
        try:
            return await asyncio.to_thread(_read_blocks, self._path(root), indices)
        except FileNotFoundError:
            return None

    def is_kept(self, root: bytes) -> bool:
        row = self._db.execute("SELECT kept_for FROM chunks WHERE root=?", (root,)).fetchone()
        return row is not None and row[0] is not None

    def roots(self) -> list[bytes]:
        return [root for (root,) in self._db.execute("SELECT root FROM chunks ORDER BY root")]

    def kept(self) -> list[tuple[bytes, bytes]]:
        """`(root, blob id)` of every kept chunk."""
        return self._db.execute("SELECT root, kept_for FROM chunks WHERE kept_for IS NOT NULL").fetchall()

    def size(self, root: bytes) -> int | None:
        row = self._db.execute("SELECT size FROM chunks WHERE root=?", (root,)).fetchone()
        return None if row is None else row[0]

    def block_count(self, root: bytes) -> int | None:
        size = self.size(root)
        return None if size is None else max(1, -(-size // BLOCK_SIZE))


def _write_synced(path: Path, data: bytes) -> None:
    """Write to a temporary file, sync it, and rename it into place: all or nothing after a crash. A
    disk that is full or fails leaves nothing behind and refuses the chunk."""
    partial = path.with_name(path.name + _PARTIAL)
    try:
        path.parent.mkdir(exist_ok=True)
        with partial.open("wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ChunkRefused(f"this node cannot write the chunk to its disk ({error.strerror or error})") from error


def _read_blocks(path: Path, indices: list[int]) -> dict[int, bytes]:
    with path.open("rb") as source:
        return {index: os.pread(source.fileno(), BLOCK_SIZE, index * BLOCK_SIZE) for index in indices}
