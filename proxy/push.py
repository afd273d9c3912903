"""Push notifications (OpenDHT's SUBSCRIBE / UNSUBSCRIBE): a key's changes relayed to a push gateway.

A subscription is `(key, push token, client id)`. While it lives (24 h unless renewed, as OpenDHT), a
listener on the key turns each batch of new or expired values into one gorush-style `POST /api/push`
to the gateway given by `--pushserver`, carrying OpenDHT's payload: `{"key", "to", "t", "s", "ids"}`
(and `"exp"` for expired ids), in a notification shaped as OpenDHT 2.4's (`gateway_notification`).

Each subscription is a listener on the mesh (a subscription on the key's replicas) for a day, so a
client (`clients.client_of`) may hold at most `SUBSCRIPTIONS_PER_CLIENT` at once.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from dhtmesh.node.dht import DhtNode, ListenRefused
from dhtmesh.node.listeners import Listener, ValueEvent
from dhtmesh.node.tasks import Supervisor
from dhtmesh.node.wire.ratelimit import Full, Slots

log = logging.getLogger(__name__)

SUBSCRIPTION_LIFETIME = 24 * 3600.0
ANDROID = 2
PLATFORMS = {"ios": 1, "android": ANDROID, "unifiedpush": ANDROID}  # gorush's platform numbers
NOTIFICATION_LIFETIME = 24 * 3600  # how long the push service keeps trying to deliver, as OpenDHT asks
MAX_SUBSCRIPTIONS = 10000
# A phone subscribes to a few keys per account (its inbox, its presence, its devices); 32 leaves room
# for several accounts while one address cannot keep thousands of keys' replicas notifying this node.
SUBSCRIPTIONS_PER_CLIENT = 32


class PushError(ValueError):
    """A SUBSCRIBE/UNSUBSCRIBE body that cannot be used; the message is fit for the client."""


class SubscriptionLimit(PushError):
    """A new subscription over the client's cap or the node's; the message is fit for the client."""


@dataclass(frozen=True, slots=True)
class PushTarget:
    token: str
    client_id: str
    platform: str
    session_id: str
    topic: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "PushTarget":
        token = body.get("key")
        if not isinstance(token, str) or not token:
            raise PushError("No token")
        fields = {name: body.get(name, "") for name in ("client_id", "platform", "session_id", "topic")}
        if not all(isinstance(value, str) for value in fields.values()):
            raise PushError("client_id, platform, session_id and topic must be strings")
        return cls(token, **fields)


@dataclass(slots=True)
class _Subscription:
    key: bytes
    target: PushTarget
    client: str  # who created it, for the per-client cap
    listener: Listener
    expires: float
    task: asyncio.Task | None = field(default=None)


def gateway_notification(target: PushTarget, data: dict[str, Any], now: float) -> dict[str, Any]:
    """One gorush notification as OpenDHT 2.4's proxy writes it: an Android one lives for
    `NOTIFICATION_LIFETIME` (`time_to_live`), an iOS one expires then (`expiration`, unix seconds) and
    names its topic, when there is one."""
    platform = PLATFORMS.get(target.platform, ANDROID)
    notification: dict[str, Any] = {"tokens": [target.token], "platform": platform, "priority": "high", "data": data}
    if platform == ANDROID:
        notification["time_to_live"] = NOTIFICATION_LIFETIME
    else:
        notification["expiration"] = int(now) + NOTIFICATION_LIFETIME
        if target.topic:
            notification["topic"] = target.topic
    return notification


class PushRelay:
    def __init__(self, node: DhtNode, gateway: str | None) -> None:
        self._node = node
        self._gateway = gateway.rstrip("/") if gateway else None
        self._subscriptions: dict[tuple[bytes, str, str], _Subscription] = {}
        self._slots = Slots("push subscriptions", MAX_SUBSCRIPTIONS, SUBSCRIPTIONS_PER_CLIENT)
        self._session: aiohttp.ClientSession | None = None
        self._relays = Supervisor(node.counters)
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self._gateway is not None

    def devices(self) -> int:
        """How many push tokens hold subscriptions: OpenDHT's `pushListenersCount` (one per device,
        whatever the number of keys it subscribed to)."""
        return len({token for _, token, _ in self._subscriptions})

    async def start(self) -> None:
        if self._gateway:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def stop(self) -> None:
        for identity in list(self._subscriptions):
            self._end(identity)
        await self._relays.close()
        if self._session is not None:
            await self._session.close()

    def subscribe(self, key: bytes, target: PushTarget, client: str) -> bool:
        """Start (or renew) a subscription for `client`; True when it is new. Raises
        `SubscriptionLimit` for a new one over the client's cap or the node's."""
        self._expire()
        identity = (key, target.token, target.client_id)
        existing = self._subscriptions.get(identity)
        if existing is not None:
            existing.expires = time.monotonic() + SUBSCRIPTION_LIFETIME
            return False
        try:
            self._slots.take(client)
        except Full as full:
            raise SubscriptionLimit(f"{full} (at most {SUBSCRIPTIONS_PER_CLIENT} per address)") from full
        expires = time.monotonic() + SUBSCRIPTION_LIFETIME
        try:
            listener = self._node.listen(key)
        except ListenRefused as error:
            self._slots.give(client)
            raise SubscriptionLimit(str(error)) from error
        subscription = _Subscription(key, target, client, listener, expires)
        subscription.task = self._relays.start("push_relay", lambda: self._relay(subscription))
        self._subscriptions[identity] = subscription
        return True

    def unsubscribe(self, key: bytes, target: PushTarget) -> bool:
        return self._end((key, target.token, target.client_id))

    def _expire(self) -> None:
        now = time.monotonic()
        for identity in [i for i, s in self._subscriptions.items() if s.expires < now]:
            self._end(identity)

    def _end(self, identity: tuple[bytes, str, str]) -> bool:
        subscription = self._subscriptions.pop(identity, None)
        if subscription is None:
            return False
        subscription.listener.close()
        if subscription.task is not None:
            subscription.task.cancel()
        self._slots.give(subscription.client)
        return True

    async def _relay(self, subscription: _Subscription) -> None:
        while True:
            batch = [await subscription.listener.next()]
            while not subscription.listener.empty():
                batch.append(await subscription.listener.next())
            await self._send(subscription, batch)

    async def _send(self, subscription: _Subscription, batch: list[ValueEvent]) -> None:
        if self._session is None or self._gateway is None:
            return
        target = subscription.target
        data: dict[str, Any] = {
            "key": subscription.key.hex(),
            "to": target.client_id,
            "t": int(time.time() * 1000),
            "s": target.session_id,
            "ids": ",".join(str(e.value.id) for e in batch if not e.expired),
        }
        expired = [str(e.value.id) for e in batch if e.expired]
        if expired:
            data["exp"] = ",".join(expired)
        notification = gateway_notification(target, data, time.time())
        try:
            async with self._session.post(f"{self._gateway}/api/push", json={"notifications": [notification]}) as reply:
                if reply.status >= 400:
                    log.warning("push gateway answered %d", reply.status)
                self.sent += 1
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("push gateway unreachable: %s", error)
