"""Which rule checks the data of which value type, and the one check every hop applies to a value.

A record type's rule runs after the value's own check (ranges, signature under the key), wherever a
value enters a node: a local put, a store or notify from a peer, and every value a get gathers. So a
node, the proxy that took the request included, cannot make the mesh hold a record its rule refuses.
"""

from collections.abc import Callable, Mapping

from dhtmesh.node.records import farmer
from dhtmesh.node.values.value import Value

Rule = Callable[[bytes, Value], None]
"""Raise `InvalidValue` (or a subclass) unless `value` is a well-formed record under `key`."""

RULES: Mapping[int, Rule] = {farmer.FARMER_VALUE_TYPE: farmer.check_farmer_value}


def check_value(key: bytes, value: Value) -> None:
    value.check(key)
    rule = RULES.get(value.type)
    if rule is not None:
        rule(key, value)
