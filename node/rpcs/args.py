"""Type checks for RPC arguments: a peer chooses every msgpack type, so every field is checked."""

from dataclasses import dataclass
from typing import Any

from dhtmesh.node.wire.errors import RpcRefused

KEY_SIZE = 20


def require_key(value: Any, name: str = "key") -> bytes:
    if not (isinstance(value, bytes) and len(value) == KEY_SIZE):
        raise RpcRefused(f"{name} must be {KEY_SIZE} bytes")
    return value


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """A request that names one key and nothing else (`dm_versions`, `dm_unsub`): `{"k": key}`."""

    key: bytes

    def to_wire(self) -> dict:
        return {"k": self.key}

    @classmethod
    def from_wire(cls, body: dict) -> "KeyRequest":
        return cls(require_key(body.get("k")))


def require_int(value: Any, name: str, low: int, high: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise RpcRefused(f"{name} must be an integer in [{low}, {high}]")
    return value


def require_number(value: Any, name: str, low: float, high: float) -> float:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high):
        raise RpcRefused(f"{name} must be a number in [{low}, {high}]")
    return float(value)


Ref = tuple[bytes, int, int]
"""A value named by `(owner, id, seq)`: offered by reference in a find, or a key's version."""


def ref_from_wire(item: Any) -> Ref | None:
    """`[owner, id, seq]` as a peer sent it, or None if it is not one (a peer's garbage is left out)."""
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], bytes)):
        return None
    owner, value_id, seq = item
    return (owner, value_id, seq) if isinstance(value_id, int) and isinstance(seq, int) else None
