"""The answers of the proxy's routes that have a fixed shape, as the client reads them."""

from dataclasses import dataclass
from typing import Any

from dhtmesh.api.value_json import value_from_json
from dhtmesh.node.values.value import Value


@dataclass(frozen=True)
class Stored:
    """A put's answer (`POST /key/{key}`, `/sign`, `/encrypt`): the value as stored, with the id the node
    gave it, and how many replicas took it; `document` is the JSON as the proxy wrote it."""

    value: Value
    replicas: int
    document: dict[str, Any]

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "Stored":
        """Raises ValueError (`ValueJsonError` for the value) for an answer that is not a stored value."""
        fields = {name: item for name, item in document.items() if name != "replicas"}
        return cls(value_from_json(fields), _count(document.get("replicas", 0), "replicas"), document)


@dataclass(frozen=True)
class BlobStored:
    """`POST /api/blob`'s answer: the blob's id (64 hex), its size and how many chunks it is."""

    id: str
    size: int
    chunks: int


@dataclass(frozen=True)
class Total:
    """`GET /api/total`: the half-hour period it was computed in, the online farmers' capacity in TB
    and how many they are (dataserv's names)."""

    id: int
    total_TB: float  # dataserv's field name
    total_farmers: int


def _count(raw: Any, name: str) -> int:
    """A count as the proxy writes it (an integer; a decimal string is read too); ValueError otherwise."""
    try:
        return int(raw)
    except (TypeError, ValueError, OverflowError) as error:  # None, "x", Infinity
        raise ValueError(f"{name} must be an integer, not {raw!r}") from error
