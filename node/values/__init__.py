"""The value model (OpenDHT's): signed and unsigned values, their wire form, expiry and edit policy."""

from dhtmesh.node.values.policy import Verdict, judge_update
from dhtmesh.node.values.types import expiry_for
from dhtmesh.node.values.value import (
    MAX_DATA_SIZE,
    InvalidValue,
    Value,
    new_value_id,
    sign_value,
    value_from_wire,
)

__all__ = [
    "MAX_DATA_SIZE",
    "InvalidValue",
    "Value",
    "Verdict",
    "expiry_for",
    "judge_update",
    "new_value_id",
    "sign_value",
    "value_from_wire",
]
