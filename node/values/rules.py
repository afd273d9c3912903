"""The rules a node's values must pass beyond their own fields, as the node's core asks for them: given
to `DhtNode` by whoever builds it (the mesh's record rules, `node.records.rules.RECORD_RULES`), so that
the core knows nothing of farmers, blobs or audits (hivemind's `validation.py` plugs its record
validators in the same way)."""

from collections.abc import Callable
from dataclasses import dataclass

from dhtmesh.node.values.value import InvalidValue, Value


@dataclass(frozen=True, slots=True)
class ValueRules:
    version: int  # what a store was last checked against (`ValueStore.rules_version`)
    check: Callable[..., None]  # check(key, value, *, signature=True): raises `InvalidValue`
    lifetime: Callable[[Value], float]  # seconds the value may live from now (0: past its signer's time)
    may_follow: Callable[[Value, Value], bool]  # may_follow(current, incoming): a newer version's change
    open_refresh: Callable[[Value], bool]  # anyone may keep it alive (it proves itself)
    per_host: Callable[[Value], int | None]  # its kind's own cap on one host's values under one key
    key_of: Callable[[Value], bytes | None]  # the key a value of a known kind lives under
    signed_by_services_only: frozenset[int]  # types the node never signs for a caller

    def passes(self, key: bytes, value: Value) -> bool:
        """Whether a value verified when it came in passes the rules now (its signature is not checked
        again: the rules may have changed since, its signature may not)."""
        try:
            self.check(key, value, signature=False)
        except InvalidValue:
            return False
        return True
