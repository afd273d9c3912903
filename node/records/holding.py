"""A holding: a farmer's signed statement that it keeps a chunk for the mesh.

Holdings live under the chunk's own key (`chunk_key`, reserved for holdings), one per holder (value
id derived from the holder's node id), so a reader finds every holder of a chunk with one get, and an
auditor knows whom to challenge. Only the holder can sign its holding, so nobody can name a farmer as the holder of a
chunk it never took (and then fail it in audits); the stated length must match the blob's manifest
before an auditor challenges it.
"""

from dataclasses import astuple, dataclass

import msgpack

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import NODE_ID_SIZE, node_id_from_public_key
from dhtmesh.node.records.blob import BLOB_ID_SIZE
from dhtmesh.node.records.farmer import InvalidRecord, farmer_value_id
from dhtmesh.node.records.keys import reserved_key
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ROOT_SIZE
from dhtmesh.node.values.types import HOLDING_TYPE
from dhtmesh.node.values.value import Value, sign_value

_KEY_DOMAIN = b"dhtmesh/chunks/"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Holding:
    holder_id: bytes
    root: bytes
    length: int
    blob_id: bytes  # the blob it was kept for (a chunk shared by blobs is kept once)
    since: int

    def encode(self) -> bytes:
        return msgpack.packb([_FORMAT, *astuple(self)], use_bin_type=True)


def chunk_key(root: bytes) -> bytes:
    return reserved_key(HOLDING_TYPE, _KEY_DOMAIN, root)


def decode_holding(data: bytes) -> Holding:
    try:
        fields = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError) as error:
        raise InvalidRecord("holding data is not msgpack") from error
    if not (isinstance(fields, list) and len(fields) == 6 and fields[0] == _FORMAT):
        raise InvalidRecord("holding data is not a format-1 holding")
    holding = Holding(*fields[1:])
    sizes = ((holding.holder_id, NODE_ID_SIZE), (holding.root, ROOT_SIZE), (holding.blob_id, BLOB_ID_SIZE))
    if not all(isinstance(field, bytes) and len(field) == size for field, size in sizes):
        raise InvalidRecord("holder id, root and blob id are 20, 32 and 32 bytes")
    if not (type(holding.length) is int and 0 <= holding.length <= CHUNK_SIZE):
        raise InvalidRecord(f"a chunk's length is 0 to {CHUNK_SIZE} bytes")
    if not (type(holding.since) is int and 0 <= holding.since < 1 << 63):
        raise InvalidRecord("since is a time in seconds")
    return holding


def check_holding_value(key: bytes, value: Value) -> None:
    """The rule for `HOLDING_TYPE`: signed by the holder it names, under its chunk's key."""
    if not value.signed or value.encrypted:
        raise InvalidRecord("a holding is signed and in the clear")
    holding = decode_holding(value.data)
    if node_id_from_public_key(value.owner) != holding.holder_id:
        raise InvalidRecord("a holding must be signed by its holder")
    if key != chunk_key(holding.root) or value.id != farmer_value_id(holding.holder_id):
        raise InvalidRecord("a holding must be stored under its chunk's key, under its holder's value id")


def signed_holding(holder: Identity, holding: Holding) -> Value:
    value = Value(farmer_value_id(holding.holder_id), holding.encode(), HOLDING_TYPE, seq=1)
    return sign_value(holder, chunk_key(holding.root), value)


def holdings_in(values: list[Value], root: bytes) -> list[Holding]:
    """The holdings of chunk `root` among its key's (checked) values."""
    found = []
    for value in values:
        if value.type == HOLDING_TYPE:
            holding = decode_holding(value.data)
            if holding.root == root:
                found.append(holding)
    return found
