"""A node's reads of a sharded directory (`records.keys.ShardedDirectory`: farmers and blob manifests
live in one each): all of it at once (`read_directory`), or a live view of one kind's records in it.

The live view (`LiveView`) is opened on first use: the node gets every shard once and listens on all
of them, so that a record put through any node reaches this one's view within seconds (the shards'
replicas push it). It keeps the highest seq of each record, and forgets a record when it expires: on a
replica's notice, if the record's signed time allows it (a replica cannot hide a live record by
replaying it as expired), or when its life is over even if no notice came.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Generic

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.listeners import Listener
from dhtmesh.node.records.keys import ShardedDirectory
from dhtmesh.node.records.kind import CLOCK_SKEW, InvalidRecord, R, RecordKind
from dhtmesh.node.tasks import Supervisor
from dhtmesh.node.values.value import Value


async def read_directory(node: DhtNode, directory: ShardedDirectory) -> list[Value]:
    """Every value of the directory's type in every shard, one get each."""
    shards = await asyncio.gather(*(node.get(key, value_type=directory.record_type) for key in directory.keys))
    return [value for values in shards for value in values]


class LiveView(Generic[R]):
    """Every live record of `kind` in its directory, by the id each names, as this node follows them."""

    def __init__(
        self,
        node: DhtNode,
        kind: RecordKind[R],
        clock: Callable[[], float] = time.time,
        on_change: Callable[[R], None] | None = None,
    ) -> None:
        if kind.directory is None:
            raise ValueError(f"{kind.name} does not live in a directory")
        self._node = node
        self._kind = kind
        self._directory = kind.directory
        self._clock = clock
        self._on_change = on_change  # told of each newer record the view takes (a job's followers)
        self._view: dict[bytes, tuple[int, R]] = {}  # id -> (seq, record)
        self._listeners: list[Listener] = []
        self._loops = Supervisor(node.counters)
        self._opening = asyncio.Lock()
        self._opened = False

    async def open(self) -> None:
        """Start following every shard (once; later calls return at once)."""
        async with self._opening:
            if self._opened:
                return
            if not self._listeners:
                for key in self._directory.keys:
                    # The node's own service: not held to the cap on the keys clients may listen to.
                    listener = self._node.listen(key, capped=False)
                    self._listeners.append(listener)
                    self._loops.start(
                        "directory_follow", lambda listener=listener: self._follow(listener), self._kind.name
                    )
            for value in await read_directory(self._node, self._directory):
                self.learn(value)
            self._opened = True  # only now: a snapshot cut short is taken again by the next caller

    async def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._opened = False
        await self._loops.close()

    async def records(self) -> list[R]:
        """Every live record in the directory."""
        await self.open()
        for record_id in [record_id for record_id, (_, record) in self._view.items() if not self._alive(record)]:
            del self._view[record_id]  # past its life, even if no expiry notice reached the view (lost, refused)
        return [record for _, record in self._view.values()]

    async def found(self, record_id: bytes) -> tuple[int, R] | None:
        """The live record named by `record_id` with its seq, if the view has it."""
        await self.open()
        known = self._view.get(record_id)
        return known if known is not None and self._alive(known[1]) else None

    async def find(self, record_id: bytes) -> R | None:
        """The live record named by `record_id`, if the view has it."""
        known = await self.found(record_id)
        return None if known is None else known[1]

    def _alive(self, record: R) -> bool:
        until = self._kind.lives_until(record)
        return until is None or int(self._clock()) <= until + CLOCK_SKEW

    async def _follow(self, listener: Listener) -> None:
        async for event in listener:
            if event.expired:
                self._forget(event.value)
            else:
                self.learn(event.value)

    def _record_in(self, value: Value) -> R | None:
        """The record a (checked) value holds, if it is one: only a value of the kind's type is, since only
        it was checked against the kind's rule (the data of anything else may look like a record)."""
        if value.type != self._kind.type:
            return None
        try:
            return self._kind.decode(value.data)
        except InvalidRecord:
            return None  # values reach listeners checked; this guards against a rule change between versions

    def learn(self, value: Value) -> None:
        """Take `value` into the view if it holds a record newer than the one the view has."""
        record = self._record_in(value)
        if record is None:
            return
        known = self._view.get(record_id := self._kind.id_of(record))
        if known is None or value.seq > known[0]:
            self._view[record_id] = (value.seq, record)
            if self._on_change is not None:
                self._on_change(record)

    def _forget(self, value: Value) -> None:
        record = self._record_in(value)
        if record is None:
            return
        known = self._view.get(record_id := self._kind.id_of(record))
        if known is None or known[0] > value.seq:
            return
        until = self._kind.lives_until(record)
        if until is not None and int(self._clock()) < until - CLOCK_SKEW:
            return  # too early to be a true expiry: a replica replaying the record as expired, to hide it
        del self._view[record_id]
