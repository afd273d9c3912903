"""`dm_store` and `dm_versions`: holding a value for a proven peer, and telling a key's versions (repair
compares them before it sends anything).

Wire: `dm_store` `{"k": key, "v": value, "ttl": seconds[, "by": storer_id]}` → `{"stored": bool, "why":
verdict}`; `dm_versions` `{"k": key}` → `[[owner_ref, id, seq], ...]`. A put's lookup carries its value
in `dm_find` as `"s"` (with the same `"ttl"` and `"by"`): `Carried` reads both.

A peer must have proven its id from its address before we store anything for it: quotas are charged to
its host, and who stored a value decides who may refresh it, so neither may rest on a spoofable source
address.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dhtmesh.node.rpcs.args import KeyRequest, ref_from_wire, require_key, require_number
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.types import MAX_TYPE_EXPIRY
from dhtmesh.node.values.value import InvalidValue, Value, owner_ref, value_from_wire
from dhtmesh.node.wire.endpoint import UNPROVEN, Endpoint, Request, RpcFailure, RpcRefused
from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Address

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

STORE = "dm_store"
VERSIONS = "dm_versions"
MIN_STORE_TTL = 1.0

Versions = dict[tuple[bytes, int], int]
"""`(owner_ref, id) → seq` of a key's values."""


@dataclass(frozen=True, slots=True)
class Carried:
    """A value a peer asks us to hold, with its life and, on a hand-off or repair, the storer it names."""

    value: Value
    ttl: float
    by: bytes | None = None

    def to_wire(self, value_field: str) -> dict:
        body: dict[str, Any] = {value_field: self.value.to_wire(), "ttl": self.ttl}
        return body | ({"by": self.by} if self.by else {})

    @classmethod
    def from_wire(cls, body: dict, value_field: str) -> "Carried":
        by = body.get("by")
        if by is not None and not (isinstance(by, bytes) and len(by) == 20):
            raise RpcRefused("by must be a 20-byte node id")
        try:
            value = value_from_wire(body.get(value_field))
        except InvalidValue as error:
            raise RpcRefused(f"invalid value: {error}") from error
        # The node bounds the life by the type's and the signer's; more than any type's is garbage, and
        # under a second is not worth a row (nor a tombstone).
        ttl = require_number(body.get("ttl"), "ttl", MIN_STORE_TTL, MAX_TYPE_EXPIRY)
        return cls(value, ttl, by)


def accept_carried(node: "DhtNode", key: bytes, request: Request, carried: Carried) -> Verdict:
    """Hold the value the (proven) sender carries: checked, charged to its host, stored as its own or, on
    a hand-off, as that of the peer it names (`by`)."""
    try:
        return node.accept_store(
            key,
            carried.value,
            origin=host_of(request.address[0]),
            ttl=carried.ttl,
            sender=request.sender_id,
            by=carried.by,
        )
    except InvalidValue as error:
        raise RpcRefused(f"invalid value: {error}") from error


# ---- dm_store --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreRequest:
    key: bytes
    carried: Carried

    def to_wire(self) -> dict:
        return {"k": self.key} | self.carried.to_wire("v")


@dataclass(frozen=True, slots=True)
class StoreReply:
    stored: bool
    why: str  # the verdict (`Verdict.value`)

    def to_wire(self) -> dict:
        return {"stored": self.stored, "why": self.why}

    @classmethod
    def from_wire(cls, payload: Any) -> "StoreReply":
        """A peer's verdict: stored only if it says so plainly."""
        payload = payload if isinstance(payload, dict) else {}
        why = payload.get("why")
        return cls(payload.get("stored") is True, why if isinstance(why, str) else "")


async def call_store(endpoint: Endpoint, address: Address, request: StoreRequest) -> bool:
    """Whether the peer took the value (raises `RpcFailure` when it did not answer, or refused)."""
    reply = await endpoint.call(address, STORE, request.to_wire())
    return StoreReply.from_wire(reply.payload).stored


def serve_store(node: "DhtNode", request: Request) -> dict:
    key = require_key(request.body.get("k"))
    if not node.admission.is_proven(request.address, request.sender_id):
        raise RpcRefused(UNPROVEN)  # asked before the value is read: the caller retries once proven
    verdict = accept_carried(node, key, request, Carried.from_wire(request.body, "v"))
    return StoreReply(verdict.accepted, verdict.value).to_wire()


# ---- dm_versions -----------------------------------------------------------------------------------


async def call_versions(endpoint: Endpoint, address: Address, key: bytes) -> Versions | None:
    """The peer's versions of `key`; None if it did not answer or answered no list."""
    try:
        reply = await endpoint.call(address, VERSIONS, KeyRequest(key).to_wire())
    except RpcFailure:
        return None
    return versions_from_wire(reply.payload)


def versions_from_wire(payload: Any) -> Versions | None:
    if not isinstance(payload, list):
        return None
    versions: Versions = {}
    for ref in filter(None, map(ref_from_wire, payload)):
        owner, value_id, seq = ref
        versions[(owner_ref(owner), value_id)] = seq  # a peer of an older version names owners whole
    return versions


def serve_versions(node: "DhtNode", request: Request) -> list:
    if not request.proven:
        raise RpcRefused(UNPROVEN)  # a key's versions can be many: checked before the store is read
    versions = node.store.versions(KeyRequest.from_wire(request.body).key).items()
    return [[owner_ref(owner), value_id, seq] for (owner, value_id), seq in versions]
