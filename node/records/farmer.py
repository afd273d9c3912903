"""A farmer's registration as the mesh keeps it: one value per farmer, signed by the farmer's own key.

Records live in a directory of `DIRECTORY_SHARDS` DHT keys, a farmer in the shard named by the first
hex digit of its node id (`farmer_key`), so that the whole registry is read with 16 gets or listens, and
each shard holds up to a key's value quota of farmers. A record has type `FARMER_VALUE_TYPE`, an id
derived from the farmer's node id (`farmer_value_id`), and its owner is the farmer's Ed25519 key, whose
hash is the node id: so only the farmer can write it (a new state is a higher seq), every node can check
that the record speaks for the key that signed it, and no one can hold a farmer's id in a shard before
it (the id is bound to the key). Directory keys are reserved for farmer records (`records.keys`). A
record lives `FARMER_RECORD_EXPIRY` after the `last_seen` its farmer signed, however often it is
re-sent (`lives_until`).

Times are Unix seconds; `uptime` counts the seconds seen online since `reg_time`, as dataserv's develop
branch does.
"""

import ipaddress
import time
from dataclasses import astuple, dataclass

import msgpack

from dhtmesh.crypto.addresses import InvalidAddress, address_payload
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import NODE_ID_SIZE, node_id_from_public_key
from dhtmesh.node.records.keys import reserved_key
from dhtmesh.node.values.types import FARMER_RECORD_EXPIRY, FARMER_RECORD_TYPE
from dhtmesh.node.values.value import InvalidValue, Value, sign_value

FARMER_VALUE_TYPE = FARMER_RECORD_TYPE
DIRECTORY_SHARDS = 16
CLOCK_SKEW = 60  # seconds a record's last_seen may be ahead of this node's clock
HEIGHT_LIMIT = 200_000  # dataserv: 200,000 shards of 128 MiB, about 25 TB
_KEY_DOMAIN = b"dhtmesh/farmers/"
_FORMAT = 1


class InvalidRecord(InvalidValue):
    """A farmer value whose data is malformed or does not match the key or the signer."""


@dataclass(frozen=True, slots=True)
class FarmerRecord:
    node_id: bytes
    payout_addr: str
    reg_time: int
    last_seen: int
    height: int = 0
    uptime: int = 0
    bandwidth_upload: int = 0
    bandwidth_download: int = 0
    ip: str = ""

    def encode(self) -> bytes:
        return msgpack.packb([_FORMAT, *astuple(self)], use_bin_type=True)


def directory_key(shard: int) -> bytes:
    return reserved_key(FARMER_RECORD_TYPE, _KEY_DOMAIN, b"%x" % shard)


DIRECTORY_KEYS = tuple(directory_key(shard) for shard in range(DIRECTORY_SHARDS))


def farmer_key(node_id: bytes) -> bytes:
    """The directory shard that holds this farmer's record."""
    return DIRECTORY_KEYS[node_id[0] * DIRECTORY_SHARDS // 256]


def farmer_value_id(node_id: bytes) -> int:
    """The value id of a farmer's record: its node id's first 8 bytes (0 means "pick one" in puts)."""
    return int.from_bytes(node_id[:8], "big") or 1


def decode_farmer(data: bytes) -> FarmerRecord:
    """The record in a farmer value's data; raises `InvalidRecord` for anything malformed."""
    try:
        fields = msgpack.unpackb(data, raw=False)  # data is at most 64 KiB: the value check bounds it
    except (ValueError, TypeError) as error:  # msgpack: ValueError subclasses; TypeError for unhashable keys
        raise InvalidRecord("farmer data is not msgpack") from error
    if not (isinstance(fields, list) and len(fields) == 10 and fields[0] == _FORMAT):
        raise InvalidRecord("farmer data is not a format-1 record")
    record = FarmerRecord(*fields[1:])
    _check_fields(record)
    return record


def _check_fields(record: FarmerRecord) -> None:
    if not (isinstance(record.node_id, bytes) and len(record.node_id) == NODE_ID_SIZE):
        raise InvalidRecord("node_id must be 20 bytes")
    if not isinstance(record.payout_addr, str):
        raise InvalidRecord("payout_addr must be text")
    try:
        address_payload(record.payout_addr)
    except InvalidAddress as error:
        raise InvalidRecord(f"payout_addr: {error}") from error
    counts = (record.reg_time, record.last_seen, record.height, record.uptime)
    counts += (record.bandwidth_upload, record.bandwidth_download)
    if not all(type(n) is int and 0 <= n < 1 << 63 for n in counts):
        raise InvalidRecord("times, height, uptime and bandwidth must be non-negative integers")
    if record.last_seen > time.time() + CLOCK_SKEW:
        raise InvalidRecord("last_seen is in the future")
    if record.last_seen < record.reg_time or record.uptime > record.last_seen - record.reg_time:
        raise InvalidRecord("last_seen precedes reg_time, or uptime exceeds the time since registration")
    if record.height > HEIGHT_LIMIT:
        raise InvalidRecord(f"height is over the limit of {HEIGHT_LIMIT}")
    if not isinstance(record.ip, str) or (record.ip and not _is_ip(record.ip)):
        raise InvalidRecord("ip must be empty or a literal IP address")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_farmer_value(key: bytes, value: Value) -> None:
    """The rule for `FARMER_VALUE_TYPE`: signed by the farmer it describes, in that farmer's shard."""
    if not value.signed or value.encrypted:
        raise InvalidRecord("a farmer record is signed and in the clear")
    record = decode_farmer(value.data)
    if node_id_from_public_key(value.owner) != record.node_id:
        raise InvalidRecord("a farmer record must be signed by that farmer's own key")
    if key != farmer_key(record.node_id) or value.id != farmer_value_id(record.node_id):
        raise InvalidRecord("a farmer record must be stored in its farmer's shard, under its farmer's value id")


def lives_until(value: Value) -> float:
    """The latest time a (checked) farmer value may be held: its signed last sighting plus the type's
    expiry, so a replayed old record cannot outlive the one its farmer last signed."""
    return decode_farmer(value.data).last_seen + FARMER_RECORD_EXPIRY


def is_successor(current: FarmerRecord, incoming: FarmerRecord) -> bool:
    """Whether `incoming` can follow `current` (a replica holding the earlier state checks this): the
    registration is fixed, time moves forward, and uptime grows by at most the time that passed."""
    return (
        (incoming.node_id, incoming.payout_addr, incoming.reg_time)
        == (current.node_id, current.payout_addr, current.reg_time)
        and incoming.last_seen >= current.last_seen
        and 0 <= incoming.uptime - current.uptime <= incoming.last_seen - current.last_seen
    )


def signed_farmer_value(farmer: Identity, record: FarmerRecord, seq: int) -> Value:
    """The value a farmer puts to state `record`, signed with its own key."""
    value = Value(farmer_value_id(record.node_id), record.encode(), FARMER_VALUE_TYPE, seq=seq)
    return sign_value(farmer, farmer_key(record.node_id), value)


def next_signed(farmer: Identity, current: tuple[Value, FarmerRecord] | None, record: FarmerRecord) -> Value | None:
    """The value a farmer puts to move from `current` (its stored value and record, if registered) to
    `record`: the next seq, signed; None when nothing would change."""
    if current is None:
        return signed_farmer_value(farmer, record, 1)
    value, stored = current
    return None if record == stored else signed_farmer_value(farmer, record, value.seq + 1)
