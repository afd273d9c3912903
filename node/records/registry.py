"""The mesh's farmer registry as one node serves it: a live view of every farmer, and the changes a
farmer asks for (register, ping, height, bandwidth), each carried by the record the farmer signed.

The view is the farmer directory's live view (`directory.LiveView`), opened on first use: a node that
nobody asks about farmers pays nothing for the registry.

A change is accepted only if the farmer's signed record is exactly what dataserv's rules
(`farmer_events`) make of the current record at the record's own time, and that time is within
`RECORD_CLOCK_WINDOW` of this node's clock. The node cannot sign for a farmer, so it cannot alter what
the farmer asked for; it can only refuse.
"""

import time
from collections.abc import Callable

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.errors import ServiceError
from dhtmesh.node.records.directory import LiveView
from dhtmesh.node.records.farmer import KIND, FarmerRecord, decode_farmer, farmer_key, farmer_value_id
from dhtmesh.node.records.farmer_events import is_online, registered
from dhtmesh.node.records.rules import check_value
from dhtmesh.node.values.value import Value

RECORD_CLOCK_WINDOW = 20  # seconds, as a signed request's Date

Event = Callable[[FarmerRecord, int, str], FarmerRecord]
"""What a request does to a record: `(current, now, declared ip) -> next`."""


class RegistryError(ServiceError):
    """A farmer change the registry refuses; the subclass says why."""


class UnknownFarmer(RegistryError):
    pass


class AlreadyRegistered(RegistryError):
    pass


class BadFarmerRecord(RegistryError):
    """The signed record is missing, malformed, for another farmer, stale, or not what the change gives."""


def find_record(values: list[Value], node_id: bytes) -> tuple[Value, FarmerRecord] | None:
    """The farmer's own record among a shard's (checked) values."""
    wanted = farmer_value_id(node_id)
    for value in values:
        if value.id == wanted and value.type == KIND.type:
            record = decode_farmer(value.data)
            if record.node_id == node_id:
                return value, record
    return None


class FarmerRegistry:
    def __init__(self, node: DhtNode, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self._clock = clock
        self._view = LiveView(node, KIND, clock)

    async def open(self) -> None:
        """Start following every shard (once; later calls return at once)."""
        await self._view.open()

    async def close(self) -> None:
        await self._view.close()

    def now(self) -> int:
        return int(self._clock())

    async def farmers(self) -> list[FarmerRecord]:
        """Every farmer the mesh knows, highest height first (dataserv's order)."""
        return sorted(await self._view.records(), key=lambda r: (-r.height, r.node_id))

    async def is_registered(self, node_id: bytes) -> bool:
        """Whether `node_id` is a farmer the mesh knows (one look in the view, once it is open): the
        test for who may audit this node's chunks."""
        return await self._view.find(node_id) is not None

    async def online(self) -> list[FarmerRecord]:
        """The farmers seen within the last 5 minutes; the others stay registered."""
        now = self.now()
        return [record for record in await self.farmers() if is_online(record, now)]

    # ---- one farmer -----------------------------------------------------------------------------

    async def find(self, node_id: bytes) -> tuple[Value, FarmerRecord] | None:
        """The farmer's current signed record, as the shard's replicas hold it."""
        values = await self.node.get(farmer_key(node_id), farmer_value_id(node_id), KIND.type)
        found = find_record(values, node_id)
        if found is not None:
            self._view.learn(found[0])
        return found

    async def register(self, node_id: bytes, payout_addr: str, signed: Value | None) -> FarmerRecord:
        if await self.find(node_id) is not None:
            raise AlreadyRegistered("already registered")
        return await self._accept(
            node_id, signed, lambda record: registered(node_id, payout_addr, record.last_seen, record.ip)
        )

    async def change(self, node_id: bytes, event: Event, signed: Value | None) -> FarmerRecord:
        """Apply `event` to a registered farmer; returns the record after it (unchanged when the event
        has no effect now, such as a ping within a minute of the last, which needs no signed record)."""
        found = await self.find(node_id)
        if found is None:
            raise UnknownFarmer("farmer not found")
        current_value, current = found
        if signed is None:
            if event(current, self.now(), current.ip) != current:
                raise BadFarmerRecord("this change needs the farmer's signed record (Farmer-Record header)")
            return current
        if signed.seq <= current_value.seq:
            raise BadFarmerRecord(f"the signed record's seq must be above the current {current_value.seq}")
        return await self._accept(node_id, signed, lambda record: event(current, record.last_seen, record.ip))

    async def _accept(
        self, node_id: bytes, signed: Value | None, expected: Callable[[FarmerRecord], FarmerRecord]
    ) -> FarmerRecord:
        if signed is None:
            raise BadFarmerRecord("a registration needs the farmer's signed record (Farmer-Record header)")
        key = farmer_key(node_id)
        try:
            check_value(key, signed)
            record = decode_farmer(signed.data)
        except ValueError as error:  # InvalidValue, InvalidRecord
            raise BadFarmerRecord(f"signed record: {error}") from error
        if record.node_id != node_id:
            raise BadFarmerRecord("the signed record is another farmer's")
        if abs(record.last_seen - self._clock()) > RECORD_CLOCK_WINDOW:
            raise BadFarmerRecord(f"the signed record's time is more than {RECORD_CLOCK_WINDOW} s from now")
        if record != expected(record):
            raise BadFarmerRecord("the signed record is not what this request makes of the current one")
        await self.node.put(key, signed)
        return record
