"""Reading farmers' audit logs from the mesh, for their reputation: one get of a farmer's audit key
gives every auditor's log of it. Listings reuse what was read within `refresh` seconds."""

import asyncio
import time
from collections.abc import Callable

from dhtmesh.node.audits.reputation import Reputation, reputation
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.audit import AuditLog, audit_logs_in, audits_key

DEFAULT_REFRESH = 15.0


class ReputationBook:
    def __init__(self, node: DhtNode, refresh: float = DEFAULT_REFRESH, clock: Callable[[], float] = time.time) -> None:
        self._node = node
        self._refresh = refresh
        self._clock = clock
        self._read: dict[bytes, tuple[float, list[AuditLog]]] = {}  # farmer -> (when read, logs)

    async def logs(self, farmer_id: bytes) -> list[AuditLog]:
        """Every auditor's log of `farmer_id`, read now."""
        logs = audit_logs_in(await self._node.get(audits_key(farmer_id)), farmer_id)
        self._read[farmer_id] = (self._clock(), logs)
        return logs

    async def of(self, farmer_id: bytes) -> Reputation:
        return reputation(await self.logs(farmer_id), int(self._clock()))

    async def of_many(self, farmer_ids: list[bytes]) -> dict[bytes, Reputation]:
        """The reputations of many farmers, re-reading only logs older than `refresh` seconds."""
        now = self._clock()
        self._read = {farmer: read for farmer, read in self._read.items() if now - read[0] < self._refresh}
        await asyncio.gather(*(self.logs(farmer) for farmer in farmer_ids if farmer not in self._read))
        return {farmer: reputation(self._read[farmer][1], int(now)) for farmer in farmer_ids}
