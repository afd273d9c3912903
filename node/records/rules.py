"""The record kinds the mesh enforces, and the checks every hop applies to a value.

A record kind (libp2p's namespaced validators, one per reserved value type) says how a value of its
type is checked (`check`), under which key it lives (`key_of`), which version may follow which
(`follows`), until when a value may live at the latest whatever anyone re-sends (`lives_until`, from
times its signer signed), whether anyone may keep it alive (`open_refresh`, for records that prove
themselves), and how many of its values one host may place under one key (`per_host`, where the kind
knows its keys hold few). `RULES_VERSION` changes whenever what these rules accept changes: a node then drops what
its store holds that they refuse, once, when it starts (`DhtNode`).

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
from collections.abc import Callable
from dataclasses import dataclass

from dhtmesh.crypto import opendht
from dhtmesh.node.records import audit, blob, farmer, holding
from dhtmesh.node.records.keys import reserved_type
from dhtmesh.node.values.types import (
    AUDIT_TYPE,
    BLOB_MANIFEST_TYPE,
    CERTIFICATE_TYPE,
    FARMER_RECORD_TYPE,
    HOLDING_TYPE,
    expiry_for,
)
from dhtmesh.node.values.value import InvalidValue, Value, certificate_public_key

Rule = Callable[[bytes, Value], None]
"""Raise `InvalidValue` (or a subclass) unless `value` is a well-formed record under `key`."""


RULES_VERSION = 3  # 2: reserved keys (a record's key changed), anchored expiry; 3: certificates under their id


@dataclass(frozen=True, slots=True)
class RecordKind:
    check: Rule
    key_of: Callable[[Value], bytes]
    follows: Callable[[Value, Value], bool] = lambda current, incoming: True
    lives_until: Callable[[Value], float] | None = None
    open_refresh: bool = False
    per_host: int | None = None  # values of this kind one host may place under one key (None: the store's share)


def _farmer_follows(current: Value, incoming: Value) -> bool:
    try:
        return farmer.is_successor(farmer.decode_farmer(current.data), farmer.decode_farmer(incoming.data))
    except InvalidValue:
        return False


KINDS: dict[int, RecordKind] = {
    FARMER_RECORD_TYPE: RecordKind(
        farmer.check_farmer_value,
        lambda value: farmer.farmer_key(farmer.decode_farmer(value.data).node_id),
        _farmer_follows,
        farmer.lives_until,
    ),
    BLOB_MANIFEST_TYPE: RecordKind(
        blob.check_manifest_value,
        lambda value: blob.blob_key(blob.decode_manifest(value.data).blob_id),
        open_refresh=True,
    ),
    # A chunk has a few holders, each putting its own holding: a host placing more than a few is making
    # them up (throwaway keys), to fill the key so that no real holder can keep the chunk.
    HOLDING_TYPE: RecordKind(
        holding.check_holding_value,
        lambda value: holding.chunk_key(holding.decode_holding(value.data).root),
        per_host=8,
    ),
    AUDIT_TYPE: RecordKind(
        audit.check_audit_value,
        lambda value: audit.audits_key(audit.decode_audit_log(value.data).farmer_id),
        lives_until=audit.lives_until,
    ),
}
RESERVED_TYPES = frozenset(KINDS)
"""Value types only the node's own services sign: never signed for a caller (`DhtNode.put_signed`)."""


def check_value(key: bytes, value: Value, *, signature: bool = True) -> None:
    """Raise `InvalidValue` unless `value` may be held under `key`. `signature=False` skips verifying its
    signature again (a value read from this node's store was verified when it came in; the rules it
    must pass may have changed since, its signature may not)."""
    value.check(key, signature=signature)
    reserved = reserved_type(key, RESERVED_TYPES)
    if reserved is not None and value.type != reserved:
        raise farmer.InvalidRecord(f"this key is reserved for records of type {reserved:#06x}")
    if value.type == CERTIFICATE_TYPE:
        _check_certificate(key, value)
    kind = KINDS.get(value.type)
    if kind is not None:
        if value.opendht_signed or value.opaque:
            raise farmer.InvalidRecord("records are signed by dhtmesh (Ed25519) identities, in the clear")
        kind.check(key, value)


def _check_certificate(key: bytes, value: Value) -> None:
    """OpenDHT's store policy for certificates (`securedht.h`): one is held only under the id of its own
    key. Else anyone could fill an identity's id with 7-day junk, so that its certificate found no room
    and nobody could encrypt to it."""
    if opendht.key_id(certificate_public_key(value)) != key:
        raise InvalidValue("a certificate is held only under the id of its own key")


def passes(key: bytes, value: Value) -> bool:
    """Whether a value verified when it came in passes the rules now (its signature is not checked
    again: the rules it must pass may have changed, its signature may not)."""
    try:
        check_value(key, value, signature=False)
    except InvalidValue:
        return False
    return True


def record_key(value: Value) -> bytes | None:
    """The key a record of a known kind lives under; None for other values, or malformed records."""
    kind = KINDS.get(value.type)
    if kind is None:
        return None
    try:
        return kind.key_of(value)
    except InvalidValue:
        return None


def is_valid_successor(current: Value, incoming: Value) -> bool:
    """Whether `incoming`, a higher seq of the same (owner, id), may replace `current` (both checked)."""
    if current.type != incoming.type:
        return incoming.type not in KINDS and current.type not in KINDS  # a record never changes type
    kind = KINDS.get(incoming.type)
    return kind is None or kind.follows(current, incoming)


def lives_until(value: Value) -> float | None:
    """The latest time a (checked) value may be held, if its kind anchors it in a signed time."""
    kind = KINDS.get(value.type)
    return None if kind is None or kind.lives_until is None else kind.lives_until(value)


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
