"""`dm_sub`, `dm_unsub` and `dm_notify`: a listener subscribes to a key's replicas, which push it every
new, updated and expired value.

Wire: `dm_sub` `{"k": key, "ttl": seconds}` → true; `dm_unsub` `{"k": key}` → true; `dm_notify`
`{"k": key, "v": value, "x": expired}` → whether the receiver still listens (false: unsubscribe it).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dhtmesh.node.rpcs.args import KeyRequest, require_key, require_number
from dhtmesh.node.values.rules import ValueRules
from dhtmesh.node.values.value import InvalidValue, Value, value_from_wire
from dhtmesh.node.wire.endpoint import UNPROVEN, Endpoint, Request, RpcFailure, RpcRefused
from dhtmesh.node.wire.ratelimit import Address

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

SUBSCRIBE = "dm_sub"
UNSUBSCRIBE = "dm_unsub"
NOTIFY = "dm_notify"
MAX_SUBSCRIPTION_TTL = 600.0


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    key: bytes
    ttl: float

    def to_wire(self) -> dict:
        return {"k": self.key, "ttl": self.ttl}

    @classmethod
    def from_wire(cls, body: dict) -> "SubscribeRequest":
        return cls(require_key(body.get("k")), require_number(body.get("ttl"), "ttl", 1.0, MAX_SUBSCRIPTION_TTL))


async def call_subscribe(endpoint: Endpoint, address: Address, request: SubscribeRequest) -> bool:
    """Whether the replica took the subscription. One that has not proven us yet (our find made it
    challenge us) refuses as unproven: the endpoint retries for a moment."""
    try:
        await endpoint.call(address, SUBSCRIBE, request.to_wire())
    except RpcFailure:
        return False
    return True


def serve_subscribe(node: "DhtNode", request: Request) -> bool:
    subscription = SubscribeRequest.from_wire(request.body)
    if not node.admission.is_proven(request.address, request.sender_id):
        # Pushing to an address that never proved itself would make us a reflector (flaw F10).
        raise RpcRefused(UNPROVEN)
    if not node.hub.subscribe(subscription.key, request.address, request.sender_id, subscription.ttl):
        raise RpcRefused("too many subscriptions")
    return True


async def call_unsubscribe(endpoint: Endpoint, address: Address, key: bytes) -> None:
    try:
        await endpoint.call(address, UNSUBSCRIBE, KeyRequest(key).to_wire())
    except RpcFailure:
        pass  # its subscription expires anyway


def serve_unsubscribe(node: "DhtNode", request: Request) -> bool:
    if not node.admission.is_proven(request.address, request.sender_id):
        raise RpcRefused(UNPROVEN)  # else a spoofed datagram could drop anyone's subscription
    node.hub.unsubscribe(KeyRequest.from_wire(request.body).key, request.address, request.sender_id)
    return True


@dataclass(frozen=True, slots=True)
class Notification:
    key: bytes
    value: Any  # the value's wire form: checked by `checked_value`, only once the sender may speak
    expired: bool

    def to_wire(self) -> dict:
        return {"k": self.key, "v": self.value, "x": self.expired}

    @classmethod
    def of(cls, key: bytes, value: Value, expired: bool) -> "Notification":
        return cls(key, value.to_wire(), expired)

    @classmethod
    def from_wire(cls, body: dict) -> "Notification":
        return cls(require_key(body.get("k")), body.get("v"), body.get("x") is True)

    def checked_value(self, rules: ValueRules) -> Value:
        try:
            value = value_from_wire(self.value)
            rules.check(self.key, value)
        except InvalidValue as error:
            raise RpcRefused(f"invalid value: {error}") from error
        return value


async def call_notify(endpoint: Endpoint, address: Address, notification: Notification) -> bool:
    """Whether the subscriber still listens (one that failed to answer does not)."""
    try:
        reply = await endpoint.call(address, NOTIFY, notification.to_wire())
    except RpcFailure:
        return False
    return reply.payload is True


def serve_notify(node: "DhtNode", request: Request) -> bool:
    notification = Notification.from_wire(request.body)
    if not node.hub.is_listening(notification.key):
        return False
    if not node.subscribed_to(notification.key, request.address, request.sender_id):
        # Only a replica we subscribed to may speak for the key: anyone else could replay a signed value
        # as "expired" to hide it from our listeners, or push values no replica holds. Asked before the
        # value is checked: a notify needs no proof of address, and an RSA signature costs three times
        # what serving an unsigned notify does.
        return False
    node.hub.emit(notification.key, notification.checked_value(node.rules), notification.expired)
    return True
