"""Which rule checks the data of which value type, and the checks every hop applies to a value.

A record type's rule runs after the value's own check (ranges, signature under the key), wherever a
value enters a node: a local put, a store or notify from a peer, and every value a get gathers. So a
node, the proxy that took the request included, cannot make the mesh hold a record its rule refuses.
A replica that holds a record's earlier version also checks that the new one may follow it
(`is_valid_successor`), so a signer cannot rewrite its own history where a witness of it remains.
"""

from collections.abc import Callable, Mapping

from dhtmesh.node.records import audit, blob, farmer, holding
from dhtmesh.node.values.types import AUDIT_TYPE, BLOB_MANIFEST_TYPE, HOLDING_TYPE
from dhtmesh.node.values.value import InvalidValue, Value

Rule = Callable[[bytes, Value], None]
"""Raise `InvalidValue` (or a subclass) unless `value` is a well-formed record under `key`."""

RULES: Mapping[int, Rule] = {
    farmer.FARMER_VALUE_TYPE: farmer.check_farmer_value,
    BLOB_MANIFEST_TYPE: blob.check_manifest_value,
    HOLDING_TYPE: holding.check_holding_value,
    AUDIT_TYPE: audit.check_audit_value,
}
KEY_RULES: tuple[Rule, ...] = (farmer.check_directory_value, blob.check_blob_directory_value)
"""Rules on what a reserved key may hold, whatever the value's type."""


def check_value(key: bytes, value: Value) -> None:
    value.check(key)
    for key_rule in KEY_RULES:
        key_rule(key, value)
    rule = RULES.get(value.type)
    if rule is not None:
        rule(key, value)


def is_valid_successor(current: Value, incoming: Value) -> bool:
    """Whether `incoming`, a higher seq of the same (owner, id), may replace `current` (both checked)."""
    if current.type != incoming.type:
        return incoming.type not in RULES and current.type not in RULES  # a record never changes type
    if incoming.type != farmer.FARMER_VALUE_TYPE:
        return True
    try:
        return farmer.is_successor(farmer.decode_farmer(current.data), farmer.decode_farmer(incoming.data))
    except InvalidValue:
        return False
