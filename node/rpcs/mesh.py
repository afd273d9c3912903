"""dhtmesh's own RPCs between proven nodes: hello, find (paged values; a put's value along), fetch, store, subscribe,
notify, versions.

Every request first passes through `Admission.consider`, which refreshes a proven sender in the routing
table or challenges an unproven one. Values are verified on every hop (`DhtNode.rules`: the mesh's
`records.check_value`, through `DhtNode.accept_store` for every value a peer asks us to hold). A peer
must have proven its id from its address before we store anything for it: quotas are charged to its
host, and who stored a value decides who may refresh it, so neither may rest on a spoofable source
address.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dhtmesh.node.rpcs.args import require_int, require_key, require_number
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.rules import ValueRules
from dhtmesh.node.values.types import MAX_TYPE_EXPIRY
from dhtmesh.node.values.value import InvalidValue, Value, owner_ref, value_from_wire
from dhtmesh.node.wire.endpoint import UNPROVEN, Endpoint, Request, RpcRefused
from dhtmesh.node.wire.netgroup import host_of

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

# A find reply carries up to PAGE_ENTRIES values: small ones inline, within INLINE_BUDGET bytes in all,
# and the others as references `[owner, id, seq]` that the asker fetches once, from one replica.
PAGE_ENTRIES = 8
INLINE_VALUE_MAX = 256
INLINE_BUDGET = 512
MAX_SUBSCRIPTION_TTL = 600.0
MIN_STORE_TTL = 1.0


def checked_value(rules: ValueRules, key: bytes, raw: Any) -> Value:
    try:
        value = value_from_wire(raw)
        rules.check(key, value)
    except InvalidValue as error:
        raise RpcRefused(f"invalid value: {error}") from error
    return value


def _value_type(body: dict) -> int | None:
    """The type a find asks values of (`y`), if it asks for one."""
    return require_int(body["y"], "value type", 0, (1 << 16) - 1) if "y" in body else None


class MeshRpcs:
    def __init__(self, node: "DhtNode") -> None:
        self._node = node

    def register(self, endpoint: Endpoint) -> None:
        handlers: dict[str, Callable[[Request], Any]] = {
            "dm_hello": self.hello,
            "dm_find": self.find,
            "dm_store": self.store,
            "dm_sub": self.subscribe,
            "dm_unsub": self.unsubscribe,
            "dm_notify": self.notify,
            "dm_versions": self.versions,
            "dm_fetch": self.fetch,
        }
        for name, handler in handlers.items():
            endpoint.route(name, self._admitting(handler))

    def _admitting(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        def serve(request: Request) -> Any:
            self._node.admission.consider(request.address, request.sender_id)
            return handler(request)

        return serve

    def hello(self, request: Request) -> dict:
        return {"id": self._node.node_id, "you": list(request.address)}

    def find(self, request: Request) -> dict:
        target = require_key(request.body.get("t"), "target")
        offset = require_int(request.body.get("p", 0), "page offset", 0, 1 << 32)
        reply: dict[str, Any] = {}
        if offset == 0:
            closest = self._node.table.closest(target, exclude=[request.sender_id])
            reply["nodes"] = [c.to_wire() for c in closest]
        if request.body.get("v") is True:
            value_type = _value_type(request.body)
            if "w" in request.body:  # one value id: under a key, at most one owner holds it
                value_id = require_int(request.body.get("w"), "value id", 1, (1 << 64) - 1)
                found = self._node.store.values_with_id(target, value_id, value_type)
                reply |= {"vals": [v.to_wire() for v in found]}
            else:
                reply |= self._values_page(target, offset, value_type)
        if "s" in request.body and self._is_proven(request):
            # A put's lookup: store the value it carries, as dm_store would, and say whether we did. An
            # asker we have not proven yet gets no verdict: it sends a plain store once we have.
            reply["stored"] = self._accept(target, request).accepted
        return reply

    def _is_proven(self, request: Request) -> bool:
        return self._node.admission.is_proven(request.address, request.sender_id)

    def _values_page(self, key: bytes, offset: int, value_type: int | None) -> dict:
        values = self._node.store.values_from(key, offset, PAGE_ENTRIES + 1, value_type)
        page, more = values[:PAGE_ENTRIES], (offset + PAGE_ENTRIES if len(values) > PAGE_ENTRIES else None)
        inline: list[list] = []
        refs: list[list] = []
        budget = INLINE_BUDGET
        for value in page:
            if value.size <= min(INLINE_VALUE_MAX, budget):
                inline.append(value.to_wire())
                budget -= value.size
            else:
                refs.append([value.owner, value.id, value.seq])
        return {"vals": inline, "refs": refs, "more": more}

    def fetch(self, request: Request) -> Any:
        if not request.proven:
            raise RpcRefused(UNPROVEN)  # a value can be big: checked before the store is read
        key = require_key(request.body.get("k"))
        owner, value_id = request.body.get("o"), request.body.get("i")
        if not isinstance(owner, bytes):
            raise RpcRefused("owner must be bytes")
        value = self._node.store.get_one(key, owner, require_int(value_id, "value id", 1, (1 << 64) - 1))
        return value.to_wire() if value else None

    def store(self, request: Request) -> dict:
        key = require_key(request.body.get("k"))
        if not self._is_proven(request):
            raise RpcRefused(UNPROVEN)
        verdict = self._accept(key, request, value_field="v")
        return {"stored": verdict.accepted, "why": verdict.value}

    def _accept(self, key: bytes, request: Request, value_field: str = "s") -> Verdict:
        """Hold the value the (proven) sender carries: checked, charged to its host, stored as its own
        or, on a hand-off, as that of the peer it names (`by`)."""
        by = request.body.get("by")
        if by is not None and not (isinstance(by, bytes) and len(by) == 20):
            raise RpcRefused("by must be a 20-byte node id")
        try:
            value = value_from_wire(request.body.get(value_field))
            # The node bounds the life by the type's and the signer's; more than any type's is garbage, and
            # under a second is not worth a row (nor a tombstone).
            ttl = require_number(request.body.get("ttl"), "ttl", MIN_STORE_TTL, MAX_TYPE_EXPIRY)
            return self._node.accept_store(
                key, value, origin=host_of(request.address[0]), ttl=ttl, sender=request.sender_id, by=by
            )
        except InvalidValue as error:
            raise RpcRefused(f"invalid value: {error}") from error

    def subscribe(self, request: Request) -> bool:
        key = require_key(request.body.get("k"))
        ttl = require_number(request.body.get("ttl"), "ttl", 1.0, MAX_SUBSCRIPTION_TTL)
        if not self._node.admission.is_proven(request.address, request.sender_id):
            # Pushing to an address that never proved itself would make us a reflector (flaw F10).
            raise RpcRefused("unproven")
        if not self._node.hub.subscribe(key, request.address, request.sender_id, ttl):
            raise RpcRefused("too many subscriptions")
        return True

    def unsubscribe(self, request: Request) -> bool:
        if not self._is_proven(request):
            raise RpcRefused(UNPROVEN)  # else a spoofed datagram could drop anyone's subscription
        self._node.hub.unsubscribe(require_key(request.body.get("k")), request.address, request.sender_id)
        return True

    def notify(self, request: Request) -> bool:
        key = require_key(request.body.get("k"))
        if not self._node.hub.is_listening(key):
            return False
        if not self._node.subscribed_to(key, request.address, request.sender_id):
            # Only a replica we subscribed to may speak for the key: anyone else could replay a signed
            # value as "expired" to hide it from our listeners, or push values no replica holds. Asked
            # before the value is checked: a notify needs no proof of address, and an RSA signature
            # costs three times what serving an unsigned notify does.
            return False
        value = checked_value(self._node.rules, key, request.body.get("v"))
        self._node.hub.emit(key, value, request.body.get("x") is True)
        return True

    def versions(self, request: Request) -> list:
        if not request.proven:
            raise RpcRefused(UNPROVEN)  # a key's versions can be many: checked before the store is read
        key = require_key(request.body.get("k"))
        versions = self._node.store.versions(key).items()
        return [[owner_ref(owner), value_id, seq] for (owner, value_id), seq in versions]
