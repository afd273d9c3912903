"""A stream's meta: its checks (JSON of at most `MAX_META` bytes; retention keys well-typed) and the
retention it states (`max_len`, `max_age`, `max_bytes`), enforced on every home."""

from dataclasses import dataclass

import orjson

from dhtmesh.node.streams.errors import BadStreamRequest

MAX_META = 16 * 1024


@dataclass(frozen=True, slots=True)
class Retention:
    max_len: int | None = None
    max_age: float | None = None  # seconds
    max_bytes: int | None = None

    @property
    def any(self) -> bool:
        return self.max_len is not None or self.max_age is not None or self.max_bytes is not None


def _positive(meta: dict, key: str, kinds: tuple[type, ...]) -> None:
    value = meta.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise BadStreamRequest(f"meta {key} must be a number above 0")


def checked_meta(meta: object) -> dict:
    """`meta` if it is a JSON object of at most `MAX_META` bytes with well-formed retention keys."""
    if not isinstance(meta, dict):
        raise BadStreamRequest("meta must be a JSON object")
    try:
        size = len(orjson.dumps(meta))
    except TypeError as error:
        raise BadStreamRequest("meta must be JSON") from error
    if size > MAX_META:
        raise BadStreamRequest(f"meta is at most {MAX_META} bytes of JSON")
    _positive(meta, "max_len", (int,))
    _positive(meta, "max_bytes", (int,))
    _positive(meta, "max_age", (int, float))
    return meta


def retention_of(meta: dict) -> Retention:
    return Retention(meta.get("max_len"), meta.get("max_age"), meta.get("max_bytes"))
