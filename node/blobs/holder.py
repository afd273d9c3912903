"""A farmer's side of blobs: a pending chunk is kept once the mesh holds a manifest that lists it (the
farmer then signs and publishes its holding, and re-announces the manifest for as long as it keeps
the chunk), and pending chunks an upload never published are dropped after `pending_timeout`.
"""

import asyncio
import logging
import time

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.blob import blob_key, blob_value_id, find_manifest
from dhtmesh.node.records.holding import Holding, chunk_key, signed_holding
from dhtmesh.node.storage.chunks import ChunkStore
from dhtmesh.node.streams.chunk_service import Refused
from dhtmesh.node.values.types import BLOB_MANIFEST_TYPE

log = logging.getLogger(__name__)

DEFAULT_PENDING_TIMEOUT = 600.0  # seconds an upload has to publish its blob


class ChunkKeeper:
    def __init__(self, node: DhtNode, chunks: ChunkStore, pending_timeout: float = DEFAULT_PENDING_TIMEOUT) -> None:
        self._node = node
        self._chunks = chunks
        self._pending_timeout = pending_timeout

    async def keep(self, root: bytes, blob_id: bytes) -> None:
        """Keep pending chunk `root` for `blob_id`, if the mesh has that blob's manifest and it lists
        this chunk with its length; raises `Refused` otherwise."""
        length = self._chunks.size(root)
        if length is None:
            raise Refused("chunk not held here")
        if self._chunks.is_kept(root):
            return
        values = await self._node.get(blob_key(blob_id), blob_value_id(blob_id))
        manifest = find_manifest(values, blob_id)
        if manifest is None:
            raise Refused("no manifest of this blob in the mesh")
        if (root, length) not in zip(manifest.chunk_roots, manifest.chunk_lengths, strict=True):
            raise Refused("the blob's manifest does not list this chunk")
        holding = Holding(self._node.node_id, root, length, blob_id, int(time.time()))
        await self._node.put(chunk_key(root), signed_holding(self._node.identity, holding), permanent=True)
        self._chunks.keep(root, blob_id)  # after the holding is out: a failed put leaves it pending, to retry
        for value in values:
            if value.type == BLOB_MANIFEST_TYPE:
                self._node.store.add_announce(blob_key(blob_id), value)

    async def sweep_pending(self) -> None:
        """Every so often, drop the pending chunks whose upload has had its time."""
        while True:
            await asyncio.sleep(min(60.0, self._pending_timeout / 4))
            dropped = self._chunks.drop_pending(time.time() - self._pending_timeout)
            if dropped:
                self._node.counters.add("pending_chunks_dropped", len(dropped))
                log.info("dropped %d chunks of uploads never published", len(dropped))
