"""Where a chunk goes: onto `replicas` distinct farmers, the online farmers closest to the chunk's root
(XOR distance) that take it; a farmer that is full, away or refuses is passed over for the next.

A farmer's chunk service listens on TCP at its node's UDP address, so finding a farmer is finding its
node: from the routing table, or with a lookup of its id.
"""

import asyncio
import logging

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.registry import FarmerRegistry
from dhtmesh.node.transfer.chunk_client import ChunkClient, HolderFailed
from dhtmesh.node.wire.ratelimit import Address

log = logging.getLogger(__name__)

DEFAULT_REPLICAS = 3


def by_closeness(target: bytes, node_ids: list[bytes]) -> list[bytes]:
    """`node_ids`, closest to `target` (its first 20 bytes) first."""
    point = int.from_bytes(target[:20], "big")
    return sorted(node_ids, key=lambda node_id: int.from_bytes(node_id, "big") ^ point)


class Placer:
    def __init__(
        self, node: DhtNode, registry: FarmerRegistry, client: ChunkClient, replicas: int = DEFAULT_REPLICAS
    ) -> None:
        self.node = node
        self.registry = registry
        self.client = client
        self.replicas = replicas

    async def farmers(self) -> list[bytes]:
        """The node ids of the farmers online now."""
        return [record.node_id for record in await self.registry.online()]

    async def address_of(self, node_id: bytes) -> Address | None:
        if node_id == self.node.node_id:
            return self.node.address
        contact = self.node.known_contact(node_id)
        if contact is None:
            contact = next((c for c in await self.node.lookup(node_id) if c.node_id == node_id), None)
        return None if contact is None else contact.address

    async def place(
        self, root: bytes, data: bytes, farmers: list[bytes], exclude: set[bytes] | None = None, count: int = 0
    ) -> list[bytes]:
        """Put the chunk on `count` (default: `replicas`) farmers not in `exclude`, closest first;
        returns those that took it (fewer if too few would)."""
        wanted = count or self.replicas
        order = [farmer for farmer in by_closeness(root, farmers) if farmer not in (exclude or set())]
        placed: list[bytes] = []
        while len(placed) < wanted and order:
            batch, order = order[: wanted - len(placed)], order[wanted - len(placed) :]
            took = await asyncio.gather(*(self._put(farmer, root, data) for farmer in batch))
            placed += [farmer for farmer, ok in zip(batch, took, strict=True) if ok]
        return placed

    async def _put(self, farmer: bytes, root: bytes, data: bytes) -> bool:
        address = await self.address_of(farmer)
        if address is None:
            return False
        try:
            await self.client.put(address, farmer, root, data)
        except HolderFailed as error:
            log.info("farmer %s did not take chunk %s: %s", farmer.hex(), root.hex(), error)
            return False
        return True

    async def keep(self, holders: list[bytes], root: bytes, blob_id: bytes) -> list[bytes]:
        """Ask each holder to keep the chunk for the published blob; returns those that did."""
        kept = await asyncio.gather(*(self._keep(holder, root, blob_id) for holder in holders))
        return [holder for holder, ok in zip(holders, kept, strict=True) if ok]

    async def _keep(self, holder: bytes, root: bytes, blob_id: bytes) -> bool:
        address = await self.address_of(holder)
        if address is None:
            return False
        try:
            await self.client.keep(address, root, blob_id)
        except HolderFailed as error:
            log.info("farmer %s did not keep chunk %s: %s", holder.hex(), root.hex(), error)
            return False
        return True
