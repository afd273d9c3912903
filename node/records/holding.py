"""A holding: a farmer's signed statement that it keeps a chunk for the mesh.

Holdings live under the chunk's own key (`chunk_key`, reserved for holdings), one per holder (value
id derived from the holder's node id), so a reader finds every holder of a chunk with one get, and an
auditor knows whom to challenge. Only the holder can sign its holding, so nobody can name a farmer as the holder of a
chunk it never took (and then fail it in audits); the stated length must match the blob's manifest
before an auditor challenges it. A holding is re-announced by its holder for as long as it keeps the
chunk, and lives a day after the last.
"""

from dataclasses import astuple, dataclass

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import NODE_ID_SIZE
from dhtmesh.crypto.merkle import CHUNK_SIZE, ROOT_SIZE
from dhtmesh.node.records.blob import BLOB_ID_SIZE
from dhtmesh.node.records.keys import reserved_key
from dhtmesh.node.records.kind import InvalidRecord, RecordKind, pack, unpack, well_sized
from dhtmesh.node.values.types import DAY
from dhtmesh.node.values.value import Value

HOLDING_TYPE = 0x486C
_KEY_DOMAIN = b"dhtmesh/chunks/"


@dataclass(frozen=True, slots=True)
class Holding:
    holder_id: bytes
    root: bytes
    length: int
    blob_id: bytes  # the blob it was kept for (a chunk shared by blobs is kept once)
    since: int

    def encode(self) -> bytes:
        return pack(*astuple(self))


def chunk_key(root: bytes) -> bytes:
    return reserved_key(HOLDING_TYPE, _KEY_DOMAIN, root)


def decode_holding(data: bytes) -> Holding:
    holding = Holding(*unpack(data, "holding", 5))
    if not well_sized(((holding.holder_id, NODE_ID_SIZE), (holding.root, ROOT_SIZE), (holding.blob_id, BLOB_ID_SIZE))):
        raise InvalidRecord("holder id, root and blob id are 20, 32 and 32 bytes")
    if not (type(holding.length) is int and 0 <= holding.length <= CHUNK_SIZE):
        raise InvalidRecord(f"a chunk's length is 0 to {CHUNK_SIZE} bytes")
    if not (type(holding.since) is int and 0 <= holding.since < 1 << 63):
        raise InvalidRecord("since is a time in seconds")
    return holding


# A chunk has a few holders, each putting its own holding: a host placing more than a few (`per_host`)
# is making them up (throwaway keys), to fill the key so that no real holder can keep the chunk.
KIND = RecordKind(
    HOLDING_TYPE,
    1 * DAY,
    "a holding",
    decode_holding,
    lambda holding: holding.holder_id,
    key_of=lambda holding: chunk_key(holding.root),
    signer="its holder",
    per_host=8,
)


def signed_holding(holder: Identity, holding: Holding) -> Value:
    return KIND.sign(holder, holding, 1)


def holdings_in(values: list[Value], root: bytes) -> list[Holding]:
    """The holdings of chunk `root` among its key's (checked) values."""
    return [holding for holding in KIND.records_in(values) if holding.root == root]
