"""The mesh's farmer registry as one node serves it: a live view of every farmer, and the changes a
farmer asks for (register, ping, height, bandwidth), each carried by the record the farmer signed.

The view is opened on first use: the node gets every directory shard once and listens on all of them,
so that a registration or ping made through any node reaches this one's view within seconds (the
shards' replicas push it). A node that nobody asks about farmers pays nothing for the registry.

A change is accepted only if the farmer's signed record is exactly what dataserv's rules
(`farmer_events`) make of the current record at the record's own time, and that time is within
`RECORD_CLOCK_WINDOW` of this node's clock. The node cannot sign for a farmer, so it cannot alter what
the farmer asked for; it can only refuse.
"""

import asyncio
import time
from collections.abc import Callable

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.listeners import Listener
from dhtmesh.node.records.farmer import (
    CLOCK_SKEW,
    DIRECTORY_KEYS,
    FARMER_VALUE_TYPE,
    FarmerRecord,
    InvalidRecord,
    decode_farmer,
    farmer_key,
    farmer_value_id,
)
from dhtmesh.node.records.farmer_events import is_online, registered
from dhtmesh.node.records.rules import check_value
from dhtmesh.node.tasks import Supervisor
from dhtmesh.node.values.types import FARMER_RECORD_EXPIRY
from dhtmesh.node.values.value import Value

RECORD_CLOCK_WINDOW = 20  # seconds, as a signed request's Date

Event = Callable[[FarmerRecord, int, str], FarmerRecord]
"""What a request does to a record: `(current, now, declared ip) -> next`."""


class RegistryError(Exception):
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
        if value.id == wanted and value.type == FARMER_VALUE_TYPE:
            record = decode_farmer(value.data)
            if record.node_id == node_id:
                return value, record
    return None


def _record_in(value: Value) -> FarmerRecord | None:
    """The farmer record a (checked) value holds, if it is one: only a value of the farmer type is, since
    only it was checked against the farmer rule (the data of anything else may look like a record)."""
    if value.type != FARMER_VALUE_TYPE:
        return None
    try:
        return decode_farmer(value.data)
    except InvalidRecord:
        return None  # values reach listeners checked; this guards against a rule change between versions


class FarmerRegistry:
    def __init__(self, node: DhtNode, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self._clock = clock
        self._view: dict[bytes, tuple[int, FarmerRecord]] = {}  # node id -> (seq, record)
        self._listeners: list[Listener] = []
        self._loops = Supervisor(node.counters)
        self._opening = asyncio.Lock()
        self._opened = False

    # ---- the live view ------------------------------------------------------------------------

    async def open(self) -> None:
        """Start following every shard (once; later calls return at once)."""
        async with self._opening:
            if self._opened:
                return
            if not self._listeners:
                for key in DIRECTORY_KEYS:
                    # The node's own service: not held to the cap on the keys clients may listen to.
                    listener = self.node.listen(key, capped=False)
                    self._listeners.append(listener)
                    self._loops.start("registry_follow", lambda listener=listener: self._follow(listener))
            shards = await asyncio.gather(*(self.node.get(key, value_type=FARMER_VALUE_TYPE) for key in DIRECTORY_KEYS))
            for values in shards:
                for value in values:
                    self._learn(value)
            self._opened = True  # only now: a snapshot cut short is taken again by the next caller

    async def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._opened = False
        await self._loops.close()

    def now(self) -> int:
        return int(self._clock())

    async def farmers(self) -> list[FarmerRecord]:
        """Every farmer the mesh knows, highest height first (dataserv's order)."""
        await self.open()
        self._drop_expired()
        records = [record for _, record in self._view.values()]
        return sorted(records, key=lambda r: (-r.height, r.node_id))

    async def is_registered(self, node_id: bytes) -> bool:
        """Whether `node_id` is a farmer the mesh knows (one look in the view, once it is open): the
        test for who may audit this node's chunks."""
        await self.open()
        known = self._view.get(node_id)
        return known is not None and known[1].last_seen >= self._oldest_live()

    def _oldest_live(self) -> int:
        """The oldest `last_seen` a record can have and still be alive."""
        return self.now() - FARMER_RECORD_EXPIRY - CLOCK_SKEW

    def _drop_expired(self) -> None:
        """Records past their life leave the view even if no expiry notice reached it (lost, refused)."""
        oldest = self._oldest_live()
        for node_id in [node_id for node_id, (_, record) in self._view.items() if record.last_seen < oldest]:
            del self._view[node_id]

    async def online(self) -> list[FarmerRecord]:
        """The farmers seen within the last 5 minutes; the others stay registered."""
        now = self.now()
        return [record for record in await self.farmers() if is_online(record, now)]

    async def _follow(self, listener: Listener) -> None:
        async for event in listener:
            if event.expired:
                self._forget(event.value)
            else:
                self._learn(event.value)

    def _learn(self, value: Value) -> None:
        record = _record_in(value)
        known = self._view.get(record.node_id) if record else None
        if record is not None and (known is None or value.seq > known[0]):
            self._view[record.node_id] = (value.seq, record)

    def _forget(self, value: Value) -> None:
        record = _record_in(value)
        known = self._view.get(record.node_id) if record else None
        if record is None or known is None or known[0] > value.seq:
            return
        if self.now() < record.last_seen + FARMER_RECORD_EXPIRY - CLOCK_SKEW:
            return  # too early to be a true expiry: a replica replaying the record as expired, to hide it
        del self._view[record.node_id]

    # ---- one farmer -----------------------------------------------------------------------------

    async def find(self, node_id: bytes) -> tuple[Value, FarmerRecord] | None:
        """The farmer's current signed record, as the shard's replicas hold it."""
        values = await self.node.get(farmer_key(node_id), farmer_value_id(node_id), FARMER_VALUE_TYPE)
        found = find_record(values, node_id)
        if found is not None:
            self._learn(found[0])
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
