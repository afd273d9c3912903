"""A blob's manifest: the signed value that says which chunks, of which lengths, make up a blob.

The blob's id is the Merkle root over its chunks (`crypto.merkle.blob_root`), so the manifest proves
itself: a node checks that its chunk list hashes to the id it is stored under, whoever signed it.
Manifests live in a directory of `BLOB_SHARDS` keys (the shard named by the id's first hex digit), so
that auditors can read every blob in the mesh with 16 gets; a manifest's value id is derived from the
blob id, and blob directory keys are reserved for manifests (`records.keys`). A manifest proves itself,
so anyone (its uploader, every farmer keeping one of its chunks) may keep it alive.
"""

import re
from dataclasses import dataclass, field
from itertools import accumulate

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.merkle import BLOCK_SIZE, CHUNK_SIZE, ROOT_SIZE, blob_root
from dhtmesh.node.records.keys import ShardedDirectory
from dhtmesh.node.records.kind import InvalidRecord, RecordKind, pack, unpack, value_id_of
from dhtmesh.node.values.types import DAY
from dhtmesh.node.values.value import Value

# A manifest lives as long as someone re-announces it: its uploader and every farmer keeping a chunk of it.
BLOB_MANIFEST_TYPE = 0x426C
BLOB_MANIFEST_EXPIRY = 30 * DAY
BLOB_SHARDS = 16
BLOB_ID_SIZE = ROOT_SIZE
# What a manifest (at most 64 KiB of data) can list: 6 GiB of 4 MiB chunks. Enforced by the rule, not
# only by uploads: anyone can sign a manifest, and every auditor's catalog holds every chunk listed.
MAX_CHUNKS = 1536


@dataclass(frozen=True, slots=True)
class Manifest:
    chunk_roots: tuple[bytes, ...]
    chunk_lengths: tuple[int, ...]
    blob_id: bytes = field(init=False, repr=False, compare=False)  # the root over its chunks, once

    def __post_init__(self) -> None:
        object.__setattr__(self, "blob_id", blob_root(list(zip(self.chunk_roots, self.chunk_lengths, strict=True))))

    @property
    def size(self) -> int:
        return sum(self.chunk_lengths)

    def chunk_offsets(self) -> list[int]:
        """Where each chunk starts in the blob."""
        return [0, *accumulate(self.chunk_lengths)][:-1]

    def block_count(self, index: int) -> int:
        return max(1, -(-self.chunk_lengths[index] // BLOCK_SIZE))

    def encode(self) -> bytes:
        return pack(list(self.chunk_roots), list(self.chunk_lengths))


BLOBS = ShardedDirectory(BLOB_MANIFEST_TYPE, b"dhtmesh/blobs/", BLOB_SHARDS)
BLOB_KEYS = BLOBS.keys
blob_key = BLOBS.key_for  # the directory shard that holds a blob's manifest, by the blob's id
blob_value_id = value_id_of  # a manifest's value id, by its blob's id


def decode_manifest(data: bytes) -> Manifest:
    """The manifest in a value's data; raises `InvalidRecord` for anything malformed."""
    roots, lengths = unpack(data, "manifest", 2)
    if not (isinstance(roots, list) and isinstance(lengths, list) and 0 < len(roots) == len(lengths) <= MAX_CHUNKS):
        raise InvalidRecord(f"a manifest lists one length per chunk root, 1 to {MAX_CHUNKS} chunks")
    if not all(isinstance(root, bytes) and len(root) == ROOT_SIZE for root in roots):
        raise InvalidRecord("chunk roots are 32 bytes")
    empty_blob = len(lengths) == 1 and type(lengths[0]) is int and lengths[0] == 0
    if not (empty_blob or all(type(length) is int and 0 < length <= CHUNK_SIZE for length in lengths)):
        raise InvalidRecord(f"chunk lengths are 1 to {CHUNK_SIZE} bytes (an empty blob is one empty chunk)")
    return Manifest(tuple(roots), tuple(lengths))


# A manifest proves itself (its chunk list hashes to the blob id it names): anyone may keep it alive.
KIND = RecordKind(
    BLOB_MANIFEST_TYPE,
    BLOB_MANIFEST_EXPIRY,
    "a manifest",
    decode_manifest,
    lambda manifest: manifest.blob_id,
    BLOBS,
    open_refresh=True,
)
manifests_in = KIND.records_in


def signed_manifest(identity: Identity, manifest: Manifest) -> Value:
    return KIND.sign(identity, manifest, 1)


def find_manifest(values: list[Value], blob_id: bytes) -> Manifest | None:
    """The manifest of `blob_id` among a shard's (checked) values."""
    return next((manifest for manifest in manifests_in(values) if manifest.blob_id == blob_id), None)


def blob_id_from_hex(text: str) -> bytes | None:
    """A blob id written as 64 lowercase hex characters (as routes and the CLI take it), else None."""
    return bytes.fromhex(text) if re.fullmatch(r"[0-9a-f]{64}", text) else None
