"""The shape every record kind shares: what a reserved value type is, how a node checks one, and how
its signer makes one.

A record kind (libp2p's namespaced validators, one per reserved value type) is a `RecordKind`: its
value type and expiry, how its data decodes (`pack`/`unpack`: a msgpack list led by the format), under
which key it lives (`key_of`, or the shard of its `directory` for the id it names), the id it names
(`id_of`: its value id derives from it and, unless the record proves itself, the key of that id must
sign it, or the key of the id `signer_of` names: a job's records name the job and are signed by its
owner), which version may follow which (`follows`),
the signed time its life runs from (`anchor`: it lives `expiry` after that time at the latest, whatever
anyone re-sends), whether anyone may keep it alive (`open_refresh`), and how many of its values one
host may place under one key (`per_host`). The checks every hop applies come from the table of kinds
(`rules.KINDS`), so adding a kind is one new module (its record, decode and `RecordKind`) and one line
in that table.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import msgpack

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.node.records.keys import ShardedDirectory
from dhtmesh.node.values.value import InvalidValue, Value, sign_value

CLOCK_SKEW = 60  # seconds a record's signed time may be ahead of this node's clock
FORMAT = 1


class InvalidRecord(InvalidValue):
    """A record whose data is malformed or does not match the key or the signer."""


class Record(Protocol):
    def encode(self) -> bytes: ...


R = TypeVar("R", bound=Record)


def pack(*fields: object) -> bytes:
    """A record's data: its format, then its fields, as msgpack."""
    return msgpack.packb([FORMAT, *fields], use_bin_type=True)


def unpack(data: bytes, noun: str, count: int) -> list:
    """The `count` fields of a record's data; raises `InvalidRecord` unless it is a format-1 `noun`."""
    try:
        fields = msgpack.unpackb(data, raw=False)  # data is at most 64 KiB: the value check bounds it
    except (ValueError, TypeError) as error:  # msgpack: ValueError subclasses; TypeError for unhashable keys
        raise InvalidRecord(f"{noun} data is not msgpack") from error
    if not (isinstance(fields, list) and len(fields) == count + 1 and fields[0] == FORMAT):
        raise InvalidRecord(f"{noun} data is not a format-{FORMAT} {noun}")
    return fields[1:]


def well_sized(fields: Sequence[tuple[object, int]]) -> bool:
    """Whether every `(field, size)` is a bytes field of that size."""
    return all(isinstance(field, bytes) and len(field) == size for field, size in fields)


SEQ_EPOCH = 1_767_225_600  # 2026-01-01: seqs count tenths of a second from it, in 32 bits until 2039


def next_seq(last: int, now: float | None = None) -> int:
    """A signer's next seq for a record it changes often: after `last`, and from its clock, so that it is
    higher than any it gave before a restart (when its last one is forgotten)."""
    return max(last + 1, int(((time.time() if now is None else now) - SEQ_EPOCH) * 10))


def value_id_of(record_id: bytes) -> int:
    """The value id of the record named by `record_id` (a node or blob id): its first 8 bytes (0 means
    "pick one" in puts)."""
    return int.from_bytes(record_id[:8], "big") or 1


@dataclass(frozen=True, slots=True)
class RecordKind(Generic[R]):
    type: int
    expiry: float  # seconds a value of this type lives after a put
    name: str  # what a record is called in refusals ("a farmer record")
    decode: Callable[[bytes], R]  # raises InvalidRecord for anything malformed
    id_of: Callable[[R], bytes]  # the id it names (a node's, a blob's): its value id derives from it
    directory: ShardedDirectory | None = None  # where it lives, in the shard of the id it names
    key_of: Callable[[R], bytes] | None = None  # where it lives, if not in a directory
    signer: str | None = None  # who the named id is, in refusals; its key must sign; None: it proves itself
    follows: Callable[[R, R], bool] | None = None  # whether (current, incoming) is a valid change; None: any
    anchor: Callable[[R], int] | None = None  # the signed time it lives `expiry` after, at the latest
    open_refresh: bool = False
    per_host: int | None = None  # values of this kind one host may place under one key (None: the store's share)
    signer_of: Callable[[R], bytes] | None = None  # whose key must sign, if not the named id's (a job's owner)

    def __post_init__(self) -> None:
        if (self.directory is None) == (self.key_of is None):
            raise ValueError(f"{self.name}: a kind lives either in a directory or under a key of its own")

    def check(self, key: bytes, value: Value) -> None:
        """The kind's rule: signed in the clear (by the id it names, unless it proves itself), under its own
        key and the value id of the id it names."""
        if not value.signed or value.encrypted:
            raise InvalidRecord(f"{self.name} is signed and in the clear")
        record = self.decode(value.data)
        named = self.id_of(record)
        signer = named if self.signer_of is None else self.signer_of(record)
        if self.signer is not None and node_id_from_public_key(value.owner) != signer:
            raise InvalidRecord(f"{self.name} must be signed by {self.signer}")
        if key != self.key_for(record) or value.id != value_id_of(named):
            raise InvalidRecord(f"{self.name} must be stored under its own key, under its own value id")

    def key_for(self, record: R) -> bytes:
        """The key the record lives under."""
        if self.key_of is not None:
            return self.key_of(record)
        assert self.directory is not None  # __post_init__: one of the two
        return self.directory.key_for(self.id_of(record))

    def key_of_value(self, value: Value) -> bytes:
        return self.key_for(self.decode(value.data))

    def may_follow(self, current: Value, incoming: Value) -> bool:
        """Whether `incoming` may replace `current` (both checked) under the same (owner, id)."""
        if self.follows is None:
            return True
        try:
            return self.follows(self.decode(current.data), self.decode(incoming.data))
        except InvalidValue:
            return False

    def lives_until(self, record: R) -> float | None:
        """The latest time the record may be held, if the kind anchors its life in a signed time: so a
        replayed old version cannot outlive the one its signer last signed."""
        return None if self.anchor is None else self.anchor(record) + self.expiry

    def sign(self, identity: Identity, record: R, seq: int) -> Value:
        """The value `identity` puts to state `record` (its `seq`-th version)."""
        value = Value(value_id_of(self.id_of(record)), record.encode(), self.type, seq=seq)
        return sign_value(identity, self.key_for(record), value)

    def records_in(self, values: list[Value]) -> list[R]:
        """The records of this kind among (checked) values."""
        return [self.decode(value.data) for value in values if value.type == self.type]
