"""A farmer's side of blobs: a pending chunk is kept once the mesh holds a manifest that lists it (the
farmer then signs and publishes its holding, and re-announces the manifest for as long as it keeps
the chunk), and pending chunks an upload never published are dropped after `pending_timeout`.
"""

import asyncio
import logging
import time

from dhtmesh.node.dht import DhtNode, PutRefused
from dhtmesh.node.records.blob import BLOB_MANIFEST_TYPE, blob_key, blob_value_id, find_manifest
from dhtmesh.node.records.farmer import farmer_value_id
from dhtmesh.node.records.holding import Holding, chunk_key, signed_holding
from dhtmesh.node.storage.chunks import ChunkStore
from dhtmesh.node.transfer.chunk_service import NOT_HELD, Refused
from dhtmesh.node.values.value import InvalidValue

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
            raise Refused(NOT_HELD)
        holding_key, own_key = chunk_key(root), self._node.identity.public_key
        if self._node.held_value(holding_key, own_key, farmer_value_id(self._node.node_id)) is not None:
            return  # kept and announced already
        values = await self._node.get(blob_key(blob_id), blob_value_id(blob_id), BLOB_MANIFEST_TYPE)
        manifest = find_manifest(values, blob_id)
        if manifest is None:
            raise Refused("no manifest of this blob in the mesh")
        if (root, length) not in zip(manifest.chunk_roots, manifest.chunk_lengths, strict=True):
            raise Refused("the blob's manifest does not list this chunk")
        # Kept before the holding goes out, so that the sweep can never drop a chunk whose holding is
        # announced (auditors would fail this farmer for it). A refused put is withdrawn.
        if not self._chunks.keep(root, blob_id):
            raise Refused(NOT_HELD)
        holding = Holding(self._node.node_id, root, length, blob_id, int(time.time()))
        try:
            await self._node.put(holding_key, signed_holding(self._node.identity, holding), permanent=True)
        except (PutRefused, InvalidValue) as error:
            self._node.cancel_put(holding_key, farmer_value_id(self._node.node_id))
            raise Refused(f"the holding was refused: {error}") from error
        for value in values:
            if value.type == BLOB_MANIFEST_TYPE:
                self._node.keep_announcing(blob_key(blob_id), value)

    async def sweep_pending(self) -> None:
        """Every so often, drop the pending chunks whose upload has had its time."""
        while True:
            await asyncio.sleep(min(60.0, self._pending_timeout / 4))
            dropped = self._chunks.drop_pending(time.time() - self._pending_timeout)
            if dropped:
                self._node.counters.add("pending_chunks_dropped", len(dropped))
                log.info("dropped %d chunks of uploads never published", len(dropped))
