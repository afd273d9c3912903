"""The record kinds the mesh enforces, and the checks every hop applies to a value.

`KINDS` is the one table of record kinds (`kind.RecordKind`, one per reserved value type): the reserved
types, their expiry (`values.types.register_expiry`), the rule each hop applies, which version may
follow which, how long a record may live, who may keep it alive and how many one host may place under
a key all derive from it. Adding a kind is one new module and one line in `KINDS`. `RULES_VERSION`
changes whenever what these rules accept changes: a node then drops what its store holds that they
refuse, once, when it starts (`DhtNode`).

`check_value` runs wherever a value enters a node (a local put; a store, store-along or notify from a
peer, stock or not; every value a get gathers) and before a value leaves towards a service: the
value's own check (ranges, signature under the key), then the reserved-key rule (a key reserved for a
kind holds that kind only), then OpenDHT's rule for certificates (one lives under its key's id only),
then the kind's rule. So a node, the proxy that took the request included,
cannot make the mesh hold a record its rule refuses. A replica that holds a record's earlier version
also checks that the new one may follow it (`is_valid_successor`), so a signer cannot rewrite its own
history where a witness of it remains.
"""

import time

from dhtmesh.crypto import opendht
from dhtmesh.node.records import account, audit, blob, farmer, holding, outvote, stream
from dhtmesh.node.records import job as jobs
from dhtmesh.node.records.keys import reserved_type
from dhtmesh.node.records.kind import InvalidRecord, RecordKind
from dhtmesh.node.values.rules import ValueRules
from dhtmesh.node.values.types import CERTIFICATE_TYPE, expiry_for, register_expiry
from dhtmesh.node.values.value import InvalidValue, Value, certificate_public_key

# 2: reserved keys (a record's key changed), anchored expiry; 3: certificates under their id; 4: jobs;
# 5: accounts and streams
RULES_VERSION = 5


def _table(*kinds: RecordKind) -> dict[int, RecordKind]:
    """The kinds by type, each type's expiry registered for the store."""
    for kind in kinds:
        register_expiry(kind.type, kind.expiry)
    return {kind.type: kind for kind in kinds}


KINDS = _table(farmer.KIND, blob.KIND, holding.KIND, audit.KIND, *jobs.KINDS, outvote.KIND, account.KIND, stream.KIND)
RESERVED_TYPES = frozenset(KINDS)
"""Value types only the node's own services sign: never signed for a caller (`DhtNode.put_signed`)."""


def check_value(key: bytes, value: Value, *, signature: bool = True) -> None:
    """Raise `InvalidValue` unless `value` may be held under `key`. `signature=False` skips verifying its
    signature again (a value read from this node's store was verified when it came in; the rules it
    must pass may have changed since, its signature may not)."""
    value.check(key, signature=signature)
    reserved = reserved_type(key, RESERVED_TYPES)
    if reserved is not None and value.type != reserved:
        raise InvalidRecord(f"this key is reserved for records of type {reserved:#06x}")
    if value.type == CERTIFICATE_TYPE:
        _check_certificate(key, value)
    kind = KINDS.get(value.type)
    if kind is not None:
        if value.opendht_signed or value.opaque:
            raise InvalidRecord("records are signed by dhtmesh (Ed25519) identities, in the clear")
        kind.check(key, value)


def _check_certificate(key: bytes, value: Value) -> None:
    """OpenDHT's store policy for certificates (`securedht.h`): one is held only under the id of its own
    key. Else anyone could fill an identity's id with 7-day junk, so that its certificate found no room
    and nobody could encrypt to it."""
    if opendht.key_id(certificate_public_key(value)) != key:
        raise InvalidValue("a certificate is held only under the id of its own key")


def record_key(value: Value) -> bytes | None:
    """The key a record of a known kind lives under; None for other values, or malformed records."""
    kind = KINDS.get(value.type)
    if kind is None:
        return None
    try:
        return kind.key_of_value(value)
    except InvalidValue:
        return None


def is_valid_successor(current: Value, incoming: Value) -> bool:
    """Whether `incoming`, a higher seq of the same (owner, id), may replace `current` (both checked)."""
    if current.type != incoming.type:
        return incoming.type not in KINDS and current.type not in KINDS  # a record never changes type
    kind = KINDS.get(incoming.type)
    return kind is None or kind.may_follow(current, incoming)


def lives_until(value: Value) -> float | None:
    """The latest time a (checked) value may be held, if its kind anchors it in a signed time."""
    kind = KINDS.get(value.type)
    if kind is None or kind.anchor is None:
        return None  # no need to decode it (a manifest's decode hashes its chunk list)
    return kind.lives_until(kind.decode(value.data))


def lifetime(value: Value, now: float | None = None) -> float:
    """Seconds a (checked) value may live from now: its type's expiry, cut to the time its signer gave
    it if its kind anchors one (0 or less: it is past it)."""
    limit = lives_until(value)
    type_life = expiry_for(value.type)
    return type_life if limit is None else min(type_life, limit - (time.time() if now is None else now))


def per_host(value: Value) -> int | None:
    """How many values of this one's kind one host may place under one key, if its kind says."""
    kind = KINDS.get(value.type)
    return None if kind is None else kind.per_host


def open_refresh(value: Value) -> bool:
    """Whether anyone may keep this value alive (a record that proves itself)."""
    kind = KINDS.get(value.type)
    return kind is not None and kind.open_refresh


RECORD_RULES = ValueRules(
    version=RULES_VERSION,
    check=check_value,
    lifetime=lifetime,
    may_follow=is_valid_successor,
    open_refresh=open_refresh,
    per_host=per_host,
    key_of=record_key,
    signed_by_services_only=RESERVED_TYPES,
)
"""The mesh's rules as the node's core asks for them (`DhtNode(rules=...)`)."""
