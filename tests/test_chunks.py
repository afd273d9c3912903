"""The chunk store: content-addressed, quota-bound, and whole after a SIGKILL."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dhtmesh.crypto.merkle import BLOCK_SIZE, chunk_root
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ChunkRefused, ChunkStore


async def test_a_chunk_is_stored_under_its_root_and_read_back(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "chunks")
    data = os.urandom(BLOCK_SIZE * 3 + 5)
    root = chunk_root(data)
    assert await store.put(root, data) is True and await store.put(root, data) is False
    assert await store.get(root) == data and store.has(root) and store.block_count(root) == 4
    assert await store.read_blocks(root, [3, 1]) == {3: data[3 * BLOCK_SIZE :], 1: data[BLOCK_SIZE : 2 * BLOCK_SIZE]}
    assert store.used_bytes == len(data) and store.roots() == [root]
    assert store.delete(root) and await store.get(root) is None and store.used_bytes == 0
    assert await store.read_blocks(root, [0]) is None


async def test_concurrent_puts_of_one_chunk_store_it_once_and_never_pass_the_quota(tmp_path: Path) -> None:
    """Puts hash and write in worker threads, so they overlap: the index and the quota see each in turn."""
    store = ChunkStore(tmp_path / "chunks", quota_bytes=3 * 5000)
    chunks = [os.urandom(5000) for _ in range(4)]
    same = await asyncio.gather(*(store.put(chunk_root(chunks[0]), chunks[0]) for _ in range(5)))
    assert sorted(same) == [False] * 4 + [True]
    others = await asyncio.gather(*(store.put(chunk_root(c), c) for c in chunks[1:]), return_exceptions=True)
    assert sum(result is True for result in others) == 2 and sum(isinstance(r, ChunkRefused) for r in others) == 1
    assert store.used_bytes == 3 * 5000 == sum(store.size(root) or 0 for root in store.roots())


@pytest.mark.parametrize(
    "case",
    ["bytes of another chunk", "a short root", "over the chunk size", "over the quota"],
)
async def test_a_chunk_that_does_not_hash_to_its_root_or_does_not_fit_is_refused(tmp_path: Path, case: str) -> None:
    store = ChunkStore(tmp_path / "chunks", quota_bytes=10_000)
    data = os.urandom(5000)
    root, payload = {
        "bytes of another chunk": (chunk_root(data), os.urandom(5000)),
        "a short root": (chunk_root(data)[:20], data),
        "over the chunk size": (b"r" * 32, bytes(CHUNK_SIZE + 1)),
        "over the quota": (chunk_root(bytes(20_000)), bytes(20_000)),
    }[case]
    with pytest.raises(ChunkRefused):
        await store.put(root, payload)
    assert store.roots() == [] and store.used_bytes == 0
    assert not list((tmp_path / "chunks").glob("*/*"))  # nothing half-written either


@pytest.mark.process
def test_a_process_killed_with_sigkill_keeps_every_acknowledged_chunk(tmp_path: Path) -> None:
    """A child stores chunks and prints each root once stored; we SIGKILL it mid-stream."""
    script = f"""
import asyncio, os, sys
from pathlib import Path
from dhtmesh.crypto.merkle import chunk_root
from dhtmesh.node.storage.chunks import ChunkStore
store = ChunkStore(Path({str(tmp_path / "chunks")!r}))
while True:
    data = os.urandom(64 * 1024)
    root = chunk_root(data)
    asyncio.run(store.put(root, data))
    print(root.hex(), flush=True)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().strip() for _ in range(20)]
    child.kill()
    child.wait(timeout=10)
    child.stdout.close()
    store = ChunkStore(tmp_path / "chunks")
    for root in acknowledged:
        data = asyncio.run(store.get(bytes.fromhex(root)))
        assert data is not None and chunk_root(data).hex() == root
    assert not list((tmp_path / "chunks").glob("*/*.partial"))
    assert store.used_bytes == sum(len(asyncio.run(store.get(root)) or b"") for root in store.roots())
