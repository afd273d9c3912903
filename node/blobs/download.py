"""Reading a blob back: its manifest from the DHT, each chunk from any of its holders, every chunk
checked against its root before a byte of it is passed on. A holder that serves wrong bytes (or none)
is skipped for the next, and counted (`holders_wrong_bytes`, `holders_unavailable`) and logged.
"""

import asyncio
import logging
from collections.abc import AsyncIterator

from dhtmesh.node.blobs.placement import Placer, by_closeness
from dhtmesh.node.errors import ServiceError
from dhtmesh.node.records.blob import BLOB_MANIFEST_TYPE, Manifest, blob_key, blob_value_id, find_manifest
from dhtmesh.node.records.holding import HOLDING_TYPE, chunk_key, holdings_in
from dhtmesh.node.transfer.chunk_client import HolderFailed, WrongBytes

log = logging.getLogger(__name__)


class ChunkUnavailable(ServiceError):
    """No holder of a chunk served it."""


class BlobReader:
    def __init__(self, placer: Placer) -> None:
        self.placer = placer
        self._node = placer.node

    async def manifest(self, blob_id: bytes) -> Manifest | None:
        values = await self._node.get(blob_key(blob_id), blob_value_id(blob_id), BLOB_MANIFEST_TYPE)
        return find_manifest(values, blob_id)

    async def holders(self, root: bytes, length: int) -> list[bytes]:
        """The registered farmers that say they keep chunk `root` (of `length` bytes), closest to the
        root first. Anyone can sign a holding; only farmers' count, so that holdings made up by
        throwaway keys cannot make readers and auditors wait on nodes that never answer."""
        holdings = holdings_in(await self._node.get(chunk_key(root), value_type=HOLDING_TYPE), root)
        farmers = {record.node_id for record in await self.placer.registry.farmers()}
        return by_closeness(root, [h.holder_id for h in holdings if h.length == length and h.holder_id in farmers])

    async def chunk(self, manifest: Manifest, index: int) -> bytes:
        """Chunk `index` of the blob, from the first holder that serves the right bytes."""
        root = manifest.chunk_roots[index]
        for holder in await self.holders(root, manifest.chunk_lengths[index]):
            address = await self.placer.address_of(holder)
            if address is None:
                continue
            try:
                return await self.placer.client.get(address, root)
            except WrongBytes:
                self._node.counters.add("holders_wrong_bytes")
                log.warning("holder %s served wrong bytes for chunk %s; skipped", holder.hex(), root.hex())
            except HolderFailed as error:
                self._node.counters.add("holders_unavailable")
                log.info("holder %s did not serve chunk %s: %s", holder.hex(), root.hex(), error)
        raise ChunkUnavailable(f"no holder served chunk {index} ({root.hex()})")

    async def read(self, manifest: Manifest, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` (excluded) of the blob, a chunk's worth at a time; the next chunk is
        fetched while this one is passed on."""
        offsets = manifest.chunk_offsets()
        wanted = [i for i, offset in enumerate(offsets) if offset < end and offset + manifest.chunk_lengths[i] > start]
        fetches = (asyncio.ensure_future(self.chunk(manifest, index)) for index in wanted)
        current, upcoming = next(fetches, None), next(fetches, None)
        try:
            for index in wanted:
                assert current is not None
                data = await current
                offset = offsets[index]
                yield data[max(0, start - offset) : end - offset]
                current, upcoming = upcoming, next(fetches, None)
        finally:
            pending = [task for task in (current, upcoming) if task is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
