"""A node that is a farmer: it registers itself, reports its height, and pings on dataserv's schedule,
signing each new state of its record with its own key, through its own registry (no HTTP)."""

import asyncio
import logging
import time

from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.dht import PutRefused
from dhtmesh.node.records.farmer import FarmerRecord, farmer_key, next_signed
from dhtmesh.node.records.farmer_events import MAX_PING, pinged, registered, with_height
from dhtmesh.node.records.registry import FarmerRegistry, RegistryError
from dhtmesh.node.values.value import InvalidValue

log = logging.getLogger(__name__)


class FarmerAgent:
    def __init__(
        self,
        registry: FarmerRegistry,
        payout_addr: str | None = None,
        height: int | None = None,
        interval: float = MAX_PING,
        ip: str = "",
    ) -> None:
        self._node = registry.node
        self._registry = registry  # the node's one registry (`node.services`), not a view of its own
        self._payout = payout_addr or node_address(registry.node.node_id)
        self._height = height
        self._interval = interval
        self._ip = ip

    async def run(self) -> None:
        """Register (once), report the height (once), then ping every `interval` seconds; a failed
        round (no peers yet, a refusal) is logged and retried on the next one."""
        while True:
            try:
                await self.step()
            except (RegistryError, PutRefused, InvalidValue) as error:
                log.warning("farmer round refused: %s", error)
            except Exception:
                log.exception("farmer round failed")
            await asyncio.sleep(self._interval)

    async def step(self) -> FarmerRecord:
        node_id = self._node.node_id
        now = int(time.time())
        current = await self._registry.find(node_id)
        if current is None:
            record = registered(node_id, self._payout, now, self._ip)
            await self._registry.register(node_id, self._payout, next_signed(self._node.identity, None, record))
            current = await self._registry.find(node_id)
            if current is None:
                raise RegistryError("registered, but the record is not found yet")
        event = self._report_height if self._height not in (None, current[1].height) else pinged
        signed = next_signed(self._node.identity, current, event(current[1], now, self._ip))
        if signed is None:
            # Pinged within the last minute: nothing new to sign. Hand the current record to the
            # closest nodes again instead: a put made before this node had joined reached few of them.
            await self._node.announce(farmer_key(node_id), current[0])
            return current[1]
        return await self._registry.change(node_id, event, signed)

    def _report_height(self, record: FarmerRecord, now: int, ip: str) -> FarmerRecord:
        return with_height(record, self._height or 0, now, ip)
