"""Listening: local listeners that want a key's values, and remote peers subscribed to our replicas.

A `Listener` is an async iterator of `ValueEvent`s. Events for one key are deduplicated here, because
every replica a listener subscribed to pushes the same change: a value is passed on only when it is new
or has a higher seq than what this node last reported, and "expired" only for a value it reported.

Subscriptions from remote peers are bounded in all, per key, per subscribing node, per host and per
subnet, and an expired one is purged as soon as its time is up (a min-heap of expiry times, swept
every second), so floods of short subscriptions from a few identities, hosts or networks cannot lock
honest peers out.

A listener that does not keep up loses the events beyond `MAX_QUEUED_EVENTS`; each one lost is counted
(`listener_events_dropped` in the node's info).
"""

import asyncio
import heapq
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from dhtmesh.node.stats import Counters
from dhtmesh.node.values.value import Value
from dhtmesh.node.wire.netgroup import host_of, subnet_of
from dhtmesh.node.wire.ratelimit import Address, tally

MAX_QUEUED_EVENTS = 10000
MAX_SUBSCRIBERS_PER_KEY = 256
MAX_SUBSCRIBERS_PER_KEY_PER_HOST = 8  # a host's few nodes: one host cannot take every slot of a key
MAX_SUBSCRIBED_KEYS = 65536
MAX_SUBSCRIPTIONS_PER_NODE = 1024  # a node listens to at most max_listened_keys keys (256 by default)
MAX_SUBSCRIPTIONS_PER_HOST = 4096  # a few nodes on one machine
MAX_SUBSCRIPTIONS_PER_SUBNET = 16384  # a quarter of the table: one network never fills it


@dataclass(frozen=True, slots=True)
class ValueEvent:
    key: bytes
    value: Value
    expired: bool = False


class Listener:
    """One local consumer of one key's events. Close it (or leave its `with` block) to stop."""

    def __init__(self, hub: "ListenerHub", key: bytes) -> None:
        self.key = key
        self._hub = hub
        self._queue: asyncio.Queue[ValueEvent] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self.closed = False

    def deliver(self, event: ValueEvent) -> None:
        if self._queue.full():
            self._hub.dropped()  # a consumer this far behind loses events: counted, in the node's info
        else:
            self._queue.put_nowait(event)

    async def next(self) -> ValueEvent:
        return await self._queue.get()

    def empty(self) -> bool:
        """No event is waiting (the next `next()` would wait)."""
        return self._queue.empty()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub.remove(self)

    def __aiter__(self) -> AsyncIterator[ValueEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ValueEvent]:
        while not self.closed:
            yield await self._queue.get()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(slots=True)
class Subscriber:
    node_id: bytes
    expires: float


class ListenerHub:
    def __init__(self, counters: Counters, on_last_closed: Callable[[bytes], None] = lambda key: None) -> None:
        self._counters = counters
        self._listeners: dict[bytes, set[Listener]] = {}
        self._reported: dict[bytes, dict[tuple[bytes, int], Value]] = {}
        self._subscribers: dict[bytes, dict[Address, Subscriber]] = {}
        self._expiries: list[tuple[float, bytes, Address]] = []  # a min-heap; refreshed entries go stale
        self._per_node: Counter[bytes] = Counter()
        self._per_host: Counter[str] = Counter()
        self._per_subnet: Counter[str] = Counter()
        self._subscriptions = 0
        self._on_last_closed = on_last_closed

    # ---- local listeners ----------------------------------------------------------------------

    def open(self, key: bytes) -> tuple[Listener, bool]:
        """A new listener on `key` (told at once of the values already reported), and whether it is
        the first one on that key."""
        listener = Listener(self, key)
        first = key not in self._listeners
        self._listeners.setdefault(key, set()).add(listener)
        for value in self._reported.setdefault(key, {}).values():
            listener.deliver(ValueEvent(key, value))
        return listener, first

    def remove(self, listener: Listener) -> None:
        listeners = self._listeners.get(listener.key)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[listener.key]
            self._reported.pop(listener.key, None)
            self._on_last_closed(listener.key)

    def dropped(self) -> None:
        self._counters.add("listener_events_dropped")

    def is_listening(self, key: bytes) -> bool:
        return key in self._listeners

    def listener_count(self) -> int:
        return sum(len(listeners) for listeners in self._listeners.values())

    def emit(self, key: bytes, value: Value, expired: bool = False) -> None:
        reported = self._reported.get(key)
        if reported is None:
            return
        seen = reported.get(value.identity)
        if expired:
            if seen is None or seen.seq > value.seq:
                return
            del reported[value.identity]
        else:
            if seen is not None and seen.seq >= value.seq:
                return
            reported[value.identity] = value
        event = ValueEvent(key, value, expired)
        for listener in list(self._listeners.get(key, ())):
            listener.deliver(event)

    # ---- remote subscribers (we are a replica they listen to) ---------------------------------

    def subscribe(self, key: bytes, address: Address, node_id: bytes, ttl: float) -> bool:
        """Add or renew a peer's subscription; False when a cap (in all, per key, per node, per host)
        is reached."""
        now = time.monotonic()
        self.purge_expired(now)
        subscribers = self._subscribers.get(key, {})
        known = subscribers.get(address)
        if known is not None and known.node_id != node_id:
            self.unsubscribe(key, address)  # the address now speaks for another node: count it anew
            known = None
        if known is None and not self._has_room(key, subscribers, address, node_id):
            return False
        if known is None:
            self._subscribers.setdefault(key, subscribers)[address] = known = Subscriber(node_id, now + ttl)
            self._per_node[node_id] += 1
            self._per_host[host_of(address[0])] += 1
            self._per_subnet[subnet_of(address[0])] += 1
            self._subscriptions += 1
        known.expires = now + ttl
        heapq.heappush(self._expiries, (known.expires, key, address))
        if len(self._expiries) > 4 * self.subscription_count() + 1024:
            self._rebuild_expiries()  # renewals leave stale entries: keep the heap near the live count
        return True

    def _has_room(self, key: bytes, subscribers: dict[Address, Subscriber], address: Address, node_id: bytes) -> bool:
        host = host_of(address[0])
        return (
            (bool(subscribers) or len(self._subscribers) < MAX_SUBSCRIBED_KEYS)
            and len(subscribers) < MAX_SUBSCRIBERS_PER_KEY
            and sum(host_of(other[0]) == host for other in subscribers) < MAX_SUBSCRIBERS_PER_KEY_PER_HOST
            and self._per_node[node_id] < MAX_SUBSCRIPTIONS_PER_NODE
            and self._per_host[host] < MAX_SUBSCRIPTIONS_PER_HOST
            and self._per_subnet[subnet_of(address[0])] < MAX_SUBSCRIPTIONS_PER_SUBNET
        )

    def unsubscribe(self, key: bytes, address: Address, node_id: bytes | None = None) -> None:
        """Drop the subscription of `address` (only if it is `node_id`'s, when given)."""
        subscribers = self._subscribers.get(key)
        if subscribers is None:
            return
        known = subscribers.get(address)
        if node_id is not None and known is not None and known.node_id != node_id:
            return
        dropped = subscribers.pop(address, None)
        if dropped is not None:
            tally(self._per_node, dropped.node_id, -1)
            tally(self._per_host, host_of(address[0]), -1)
            tally(self._per_subnet, subnet_of(address[0]), -1)
            self._subscriptions -= 1
        if not subscribers:
            del self._subscribers[key]

    def purge_expired(self, now: float | None = None) -> int:
        """Drop every subscription whose time is up; returns how many."""
        now = time.monotonic() if now is None else now
        purged = 0
        while self._expiries and self._expiries[0][0] <= now:
            _, key, address = heapq.heappop(self._expiries)
            subscriber = self._subscribers.get(key, {}).get(address)
            if subscriber is not None and subscriber.expires <= now:
                self.unsubscribe(key, address)
                purged += 1
        return purged

    def _rebuild_expiries(self) -> None:
        self._expiries = [
            (subscriber.expires, key, address)
            for key, subscribers in self._subscribers.items()
            for address, subscriber in subscribers.items()
        ]
        heapq.heapify(self._expiries)

    def subscribers_of(self, key: bytes) -> list[tuple[Address, bytes]]:
        self.purge_expired()
        return [(address, s.node_id) for address, s in self._subscribers.get(key, {}).items()]

    def subscription_count(self) -> int:
        return self._subscriptions
