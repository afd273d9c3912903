"""Reading farmers' audit logs from the mesh, for their reputation: one get of a farmer's audit key
gives every auditor's log of it. Only logs by registered farmers count towards a reputation (anyone
can sign a log; a throwaway key must not be able to condemn or flatter a farmer). Listings reuse what
was read within `refresh` seconds."""

import asyncio
import time
from collections.abc import Callable

from dhtmesh.node.audits.reputation import Reputation, reputation
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.audit import AUDIT_TYPE, AuditLog, audit_logs_in, audits_key
from dhtmesh.node.records.registry import FarmerRegistry

DEFAULT_REFRESH = 15.0


class ReputationBook:
    def __init__(
        self,
        node: DhtNode,
        registry: FarmerRegistry,
        refresh: float = DEFAULT_REFRESH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node
        self._registry = registry
        self._refresh = refresh
        self._clock = clock
        self._read: dict[bytes, tuple[float, list[AuditLog]]] = {}  # farmer -> (when read, logs)

    async def logs(self, farmer_id: bytes) -> list[AuditLog]:
        """Every auditor's log of `farmer_id`, read now."""
        logs = audit_logs_in(await self._node.get(audits_key(farmer_id), value_type=AUDIT_TYPE), farmer_id)
        self._read[farmer_id] = (self._clock(), logs)
        return logs

    async def auditors(self) -> set[bytes]:
        """Whose logs count: the registered farmers."""
        return {record.node_id for record in await self._registry.farmers()}

    async def of(self, farmer_id: bytes) -> Reputation:
        return await self.reputation_from(await self.logs(farmer_id))

    async def reputation_from(self, logs: list[AuditLog]) -> Reputation:
        return _counted(logs, await self.auditors(), self._clock())

    async def of_many(self, farmer_ids: list[bytes]) -> dict[bytes, Reputation]:
        """The reputations of many farmers, re-reading only logs older than `refresh` seconds."""
        now = self._clock()
        self._read = {farmer: read for farmer, read in self._read.items() if now - read[0] < self._refresh}
        await asyncio.gather(*(self.logs(farmer) for farmer in farmer_ids if farmer not in self._read))
        auditors = await self.auditors()
        return {farmer: _counted(self._read[farmer][1], auditors, now) for farmer in farmer_ids}


def _counted(logs: list[AuditLog], auditors: set[bytes], now: float) -> Reputation:
    """The reputation the logs of `auditors` (registered farmers) add up to; other logs do not count."""
    return reputation([log for log in logs if log.auditor_id in auditors], int(now))
