"""Listening: local listeners that want a key's values, and remote peers subscribed to our replicas.

A `Listener` is an async iterator of `ValueEvent`s. Events for one key are deduplicated here, because
every replica a listener subscribed to pushes the same change: a value is passed on only when it is new
or has a higher seq than what this node last reported, and "expired" only for a value it reported.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from dhtmesh.node.values.value import Value
from dhtmesh.node.wire.ratelimit import Address

MAX_QUEUED_EVENTS = 10000
MAX_SUBSCRIBERS_PER_KEY = 256
MAX_SUBSCRIBED_KEYS = 65536


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
        if not self._queue.full():
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
    def __init__(self, on_last_closed: Callable[[bytes], None] = lambda key: None) -> None:
        self._listeners: dict[bytes, set[Listener]] = {}
        self._reported: dict[bytes, dict[tuple[bytes, int], Value]] = {}
        self._subscribers: dict[bytes, dict[Address, Subscriber]] = {}
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
        subscribers = self._subscribers.get(key)
        if subscribers is None:
            if len(self._subscribers) >= MAX_SUBSCRIBED_KEYS:
                return False
            subscribers = self._subscribers[key] = {}
        if address not in subscribers and len(subscribers) >= MAX_SUBSCRIBERS_PER_KEY:
            return False
        subscribers[address] = Subscriber(node_id, time.monotonic() + ttl)
        return True

    def unsubscribe(self, key: bytes, address: Address) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is not None:
            subscribers.pop(address, None)
            if not subscribers:
                del self._subscribers[key]

    def subscribers_of(self, key: bytes) -> list[tuple[Address, bytes]]:
        subscribers = self._subscribers.get(key)
        if not subscribers:
            return []
        now = time.monotonic()
        for address in [a for a, s in subscribers.items() if s.expires < now]:
            del subscribers[address]
        return [(address, s.node_id) for address, s in subscribers.items()]

    def subscription_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
