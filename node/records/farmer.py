"""A farmer's registration as the mesh keeps it: one value per farmer, signed by the farmer's own key.

Records live in a directory of `DIRECTORY_SHARDS` DHT keys (`FARMERS`), a farmer in the shard named by
the first hex digit of its node id (`farmer_key`), so that the whole registry is read with 16 gets or
listens, and each shard holds up to a key's value quota of farmers. A record has type
`FARMER_VALUE_TYPE`, an id derived from the farmer's node id (`farmer_value_id`), and its owner is the
farmer's Ed25519 key, whose hash is the node id: so only the farmer can write it (a new state is a
higher seq), every node can check that the record speaks for the key that signed it, and no one can
hold a farmer's id in a shard before it (the id is bound to the key). Directory keys are reserved for
farmer records (`records.keys`). A record lives `FARMER_RECORD_EXPIRY` after the `last_seen` its farmer
signed, however often it is re-sent (`KIND.anchor`): a farmer that is away for good drops out of the
registry then, not before.

Times are Unix seconds; `uptime` counts the seconds seen online since `reg_time`, as dataserv's develop
branch does.
"""

import ipaddress
import time
from dataclasses import astuple, dataclass

from dhtmesh.crypto.addresses import InvalidAddress, address_payload
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import NODE_ID_SIZE
from dhtmesh.node.records.keys import ShardedDirectory
from dhtmesh.node.records.kind import CLOCK_SKEW, InvalidRecord, RecordKind, pack, unpack, value_id_of
from dhtmesh.node.values.types import DAY
from dhtmesh.node.values.value import Value

FARMER_VALUE_TYPE = 0x4661
FARMER_RECORD_EXPIRY = 30 * DAY
DIRECTORY_SHARDS = 16
HEIGHT_LIMIT = 200_000  # dataserv: 200,000 shards of 128 MiB, about 25 TB


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
        return pack(*astuple(self))


FARMERS = ShardedDirectory(FARMER_VALUE_TYPE, b"dhtmesh/farmers/", DIRECTORY_SHARDS)
DIRECTORY_KEYS = FARMERS.keys
farmer_key = FARMERS.key_for  # the directory shard that holds a farmer's record, by its node id
farmer_value_id = value_id_of  # a farmer's record's value id, by its node id


def decode_farmer(data: bytes) -> FarmerRecord:
    """The record in a farmer value's data; raises `InvalidRecord` for anything malformed."""
    record = FarmerRecord(*unpack(data, "farmer", 9))
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


def is_successor(current: FarmerRecord, incoming: FarmerRecord) -> bool:
    """Whether `incoming` can follow `current` (a replica holding the earlier state checks this): the
    registration is fixed, time moves forward, and uptime grows by at most the time that passed."""
    return (
        (incoming.node_id, incoming.payout_addr, incoming.reg_time)
        == (current.node_id, current.payout_addr, current.reg_time)
        and incoming.last_seen >= current.last_seen
        and 0 <= incoming.uptime - current.uptime <= incoming.last_seen - current.last_seen
    )


KIND = RecordKind(
    FARMER_VALUE_TYPE,
    FARMER_RECORD_EXPIRY,
    "a farmer record",
    decode_farmer,
    lambda record: record.node_id,
    FARMERS,
    signer="that farmer's own key",
    follows=is_successor,
    anchor=lambda record: record.last_seen,
)


def signed_farmer_value(farmer: Identity, record: FarmerRecord, seq: int) -> Value:
    """The value a farmer puts to state `record`, signed with its own key."""
    return KIND.sign(farmer, record, seq)


def next_signed(farmer: Identity, current: tuple[Value, FarmerRecord] | None, record: FarmerRecord) -> Value | None:
    """The value a farmer puts to move from `current` (its stored value and record, if registered) to
    `record`: the next seq, signed; None when nothing would change."""
    if current is None:
        return signed_farmer_value(farmer, record, 1)
    value, stored = current
    return None if record == stored else signed_farmer_value(farmer, record, value.seq + 1)
