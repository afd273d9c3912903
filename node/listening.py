"""A node's listening: its local listeners of a key kept fed from the mesh (a lookup now and then, and
subscriptions to the key's replicas, which push changes), and its own changes pushed to the peers
subscribed to it.

`Listening` is part of `DhtNode` (a mixin): it owns the keepers of listened keys and the replicas
subscribed to; the `ListenerHub` (`listeners.py`) holds the listeners and subscribers themselves.
"""

import asyncio

from dhtmesh.node.config import NodeConfig
from dhtmesh.node.errors import NodeError
from dhtmesh.node.listeners import Listener, ListenerHub
from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.rpcs.listen import Notification, SubscribeRequest, call_notify, call_subscribe, call_unsubscribe
from dhtmesh.node.stats import Counters
from dhtmesh.node.storage.store import ValueStore
from dhtmesh.node.tasks import Supervisor, TaskSet
from dhtmesh.node.values.value import Value
from dhtmesh.node.wire.endpoint import Endpoint
from dhtmesh.node.wire.ratelimit import Address


class ListenRefused(NodeError):
    """This node already listens to as many keys as it may (`NodeConfig.max_listened_keys`)."""


class Listening:
    """`DhtNode`'s listening (it reads values through the node's `_gather` and `held`)."""

    config: NodeConfig
    counters: Counters
    store: ValueStore
    hub: ListenerHub
    endpoint: Endpoint
    loops: Supervisor
    _tasks: TaskSet
    _keepers: dict[bytes, asyncio.Task]  # the loop that keeps each listened key fed
    _subscribed: dict[bytes, list[Contact]]  # the replicas subscribed to, by key

    def _on_new_value(self, key: bytes, value: Value) -> None:
        self.hub.emit(key, value)
        self._push(key, value, expired=False)

    def _push(self, key: bytes, value: Value, *, expired: bool) -> None:
        for address, _ in self.hub.subscribers_of(key):
            self._tasks.spawn(self._notify(address, key, value, expired))

    async def _notify(self, address: Address, key: bytes, value: Value, expired: bool) -> None:
        if not await call_notify(self.endpoint, address, Notification.of(key, value, expired)):
            self.hub.unsubscribe(key, address)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            self.expire_values()
            self.hub.purge_expired()

    def expire_values(self, now: float | None = None) -> int:
        """Drop values whose time is up, and tell local listeners and subscribers they expired."""
        expired = self.store.expire(now)
        for key, value in expired:
            self.hub.emit(key, value, expired=True)
            self._push(key, value, expired=True)
        return len(expired)

    def listen(self, key: bytes, *, capped: bool = True) -> Listener:
        """Events for every new, updated and expired value under `key`, from anywhere in the mesh.
        Raises `ListenRefused` when this node already listens to `max_listened_keys` other keys; the
        node's own services (a fixed, small set of keys) pass `capped=False`, so that clients filling
        the cap cannot stop them."""
        if capped and not self.hub.is_listening(key) and len(self._keepers) >= self.config.max_listened_keys:
            self.counters.add("listens_refused")
            raise ListenRefused(f"this node listens to {self.config.max_listened_keys} keys already")
        listener, first = self.hub.open(key)
        for value in self.held(key):
            self.hub.emit(key, value)
        if first:
            self._keepers[key] = self.loops.start("listen", lambda: self._keep_listening(key), key.hex())
        return listener

    def _stop_listening(self, key: bytes) -> None:
        """The last local listener on `key` left: stop refreshing, and tell the replicas."""
        keeper = self._keepers.pop(key, None)
        if keeper is not None:
            keeper.cancel()
        for contact in self._subscribed.pop(key, []):
            self._tasks.spawn(call_unsubscribe(self.endpoint, contact.address, key))

    async def _keep_listening(self, key: bytes) -> None:
        while True:
            values, nodes = await self._gather(key)
            for value in values:
                self.hub.emit(key, value)
            self._subscribed[key] = nodes[: self.config.listen_fanout]
            await asyncio.gather(*(self._subscribe(contact, key) for contact in self._subscribed[key]))
            await asyncio.sleep(self.config.subscription_ttl / 3)

    def subscribed_to(self, key: bytes, address: Address, node_id: bytes | None) -> bool:
        """Whether the peer at `address` is a replica this node subscribed to for `key`."""
        return any(c.address == address and c.node_id == node_id for c in self._subscribed.get(key, []))

    async def _subscribe(self, contact: Contact, key: bytes) -> bool:
        subscription = SubscribeRequest(key, self.config.subscription_ttl)
        return await call_subscribe(self.endpoint, contact.address, subscription)
