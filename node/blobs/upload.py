"""Putting a blob: the incoming bytes are cut into chunks, each placed on `replicas` farmers while the
next is read (a few chunks in memory at most), then the manifest is put in the DHT and every holder
is asked to keep its chunks.

Nothing is visible before the manifest, and the manifest is put only once every chunk is placed: an
upload cut short leaves only pending chunks, which their farmers drop after their timeout. Once every
byte has arrived, publishing runs to its end even if the uploader goes away.
"""

import asyncio
import logging
from collections.abc import AsyncIterator

from dhtmesh.crypto.merkle import chunk_root
from dhtmesh.node.blobs.placement import Placer
from dhtmesh.node.dht import PutRefused
from dhtmesh.node.errors import ServiceError
from dhtmesh.node.records.blob import MAX_CHUNKS, Manifest, blob_key, signed_manifest
from dhtmesh.node.storage.chunks import CHUNK_SIZE
from dhtmesh.node.tasks import TaskSet
from dhtmesh.node.values.policy import Verdict

log = logging.getLogger(__name__)

DEFAULT_BLOB_LIMIT = 1024**3
CHUNKS_IN_FLIGHT = 2


class UploadError(ServiceError):
    """The blob was not stored; nothing of it is visible."""


class BlobTooLarge(UploadError):
    pass


class PlacementFailed(UploadError):
    """Too few farmers took a chunk (or kept it)."""


async def chunks_of(pieces: AsyncIterator[bytes], limit: int, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """The bytes of `pieces`, re-cut into chunks of `chunk_size` (the last shorter; no bytes at all
    give one empty chunk); raises `BlobTooLarge` past `limit` bytes."""
    pending = bytearray()
    total = 0
    emitted = False
    limit = min(limit, MAX_CHUNKS * chunk_size)
    async for piece in pieces:
        total += len(piece)
        if total > limit:
            raise BlobTooLarge(f"a blob is at most {limit} bytes")
        pending += piece
        while len(pending) >= chunk_size:
            yield bytes(pending[:chunk_size])
            del pending[:chunk_size]
            emitted = True
    if pending or not emitted:
        yield bytes(pending)


class Uploader:
    def __init__(self, placer: Placer) -> None:
        self._placer = placer
        self._publishing = TaskSet(placer.node.counters)

    async def close(self) -> None:
        await self._publishing.close()

    async def upload(self, pieces: AsyncIterator[bytes], limit: int = DEFAULT_BLOB_LIMIT) -> Manifest:
        """Store the blob; returns its manifest. Raises `UploadError`."""
        replicas = self._placer.replicas
        farmers = await self._placer.farmers()
        if len(farmers) < replicas:
            raise PlacementFailed(f"{len(farmers)} farmers online, {replicas} needed (one per replica)")
        roots: list[bytes] = []
        lengths: list[int] = []
        placing: list[asyncio.Task[list[bytes]]] = []
        room = asyncio.Semaphore(CHUNKS_IN_FLIGHT)
        try:
            async for chunk in chunks_of(pieces, limit):
                root = await asyncio.to_thread(chunk_root, chunk)
                roots.append(root)
                lengths.append(len(chunk))
                await room.acquire()
                task = asyncio.get_running_loop().create_task(self._placer.place(root, chunk, farmers))
                task.add_done_callback(lambda _: room.release())
                placing.append(task)
            holders = await asyncio.gather(*placing)
        finally:
            for task in placing:
                task.cancel()  # on error or cancellation: the chunks placed so far stay pending, then go
        for index, placed in enumerate(holders):
            if len(placed) < replicas:
                raise PlacementFailed(f"chunk {index} was taken by {len(placed)} farmers, {replicas} needed")
        manifest = Manifest(tuple(roots), tuple(lengths))
        publishing = self._publishing.spawn(self._publish(manifest, holders))
        return await asyncio.shield(publishing)

    async def _publish(self, manifest: Manifest, holders: list[list[bytes]]) -> Manifest:
        node = self._placer.node
        blob_id = manifest.blob_id
        try:
            await node.put(blob_key(blob_id), signed_manifest(node.identity, manifest), permanent=True)
        except PutRefused as error:
            # The same blob put earlier through another node: its manifest (the same chunks, by the
            # id) holds the id. Anything else (the shard full) leaves the blob unpublished.
            if error.verdict != Verdict.REFUSE_ID_TAKEN:
                raise PlacementFailed(f"the manifest was refused: {error}") from error
        chunks = zip(manifest.chunk_roots, holders, strict=True)
        kept = await asyncio.gather(*(self._placer.keep(placed, root, blob_id) for root, placed in chunks))
        for index, keepers in enumerate(kept):
            if not keepers:
                raise PlacementFailed(f"no farmer kept chunk {index}")
        log.info("blob %s stored: %d bytes in %d chunks", blob_id.hex(), manifest.size, len(manifest.chunk_roots))
        return manifest
