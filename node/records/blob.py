"""A blob's manifest: the signed value that says which chunks, of which lengths, make up a blob.

The blob's id is the Merkle root over its chunks (`crypto.merkle.blob_root`), so the manifest proves
itself: a node checks that its chunk list hashes to the id it is stored under, whoever signed it.
Manifests live in a directory of `BLOB_SHARDS` keys (the shard named by the id's first hex digit), so
that auditors can read every blob in the mesh with 16 gets; a manifest's value id is derived from the
blob id, and blob directory keys are reserved for manifests (`records.keys`). A manifest proves itself,
so anyone (its uploader, every farmer keeping one of its chunks) may keep it alive.
"""

import re
from dataclasses import dataclass
from itertools import accumulate

import msgpack

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.merkle import BLOCK_SIZE, blob_root
from dhtmesh.node.records.farmer import InvalidRecord
from dhtmesh.node.records.keys import reserved_key
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ROOT_SIZE
from dhtmesh.node.values.types import BLOB_MANIFEST_TYPE
from dhtmesh.node.values.value import Value, sign_value

BLOB_SHARDS = 16
BLOB_ID_SIZE = 32
# What a manifest (at most 64 KiB of data) can list: 6 GiB of 4 MiB chunks. Enforced by the rule, not
# only by uploads: anyone can sign a manifest, and every auditor's catalog holds every chunk listed.
MAX_CHUNKS = 1536
_KEY_DOMAIN = b"dhtmesh/blobs/"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Manifest:
    chunk_roots: tuple[bytes, ...]
    chunk_lengths: tuple[int, ...]

    @property
    def blob_id(self) -> bytes:
        return blob_root(list(zip(self.chunk_roots, self.chunk_lengths, strict=True)))

    @property
    def size(self) -> int:
        return sum(self.chunk_lengths)

    def chunk_offsets(self) -> list[int]:
        """Where each chunk starts in the blob."""
        return [0, *accumulate(self.chunk_lengths)][:-1]

    def block_count(self, index: int) -> int:
        return max(1, -(-self.chunk_lengths[index] // BLOCK_SIZE))

    def encode(self) -> bytes:
        return msgpack.packb([_FORMAT, list(self.chunk_roots), list(self.chunk_lengths)], use_bin_type=True)


def blob_directory_key(shard: int) -> bytes:
    return reserved_key(BLOB_MANIFEST_TYPE, _KEY_DOMAIN, b"%x" % shard)


BLOB_KEYS = tuple(blob_directory_key(shard) for shard in range(BLOB_SHARDS))


def blob_key(blob_id: bytes) -> bytes:
    """The directory shard that holds this blob's manifest."""
    return BLOB_KEYS[blob_id[0] * BLOB_SHARDS // 256]


def blob_value_id(blob_id: bytes) -> int:
    return int.from_bytes(blob_id[:8], "big") or 1


def decode_manifest(data: bytes) -> Manifest:
    """The manifest in a value's data; raises `InvalidRecord` for anything malformed."""
    try:
        fields = msgpack.unpackb(data, raw=False)  # data is at most 64 KiB: the value check bounds it
    except (ValueError, TypeError) as error:
        raise InvalidRecord("manifest data is not msgpack") from error
    if not (isinstance(fields, list) and len(fields) == 3 and fields[0] == _FORMAT):
        raise InvalidRecord("manifest data is not a format-1 manifest")
    _, roots, lengths = fields
    if not (isinstance(roots, list) and isinstance(lengths, list) and 0 < len(roots) == len(lengths) <= MAX_CHUNKS):
        raise InvalidRecord(f"a manifest lists one length per chunk root, 1 to {MAX_CHUNKS} chunks")
    if not all(isinstance(root, bytes) and len(root) == ROOT_SIZE for root in roots):
        raise InvalidRecord("chunk roots are 32 bytes")
    empty_blob = len(lengths) == 1 and type(lengths[0]) is int and lengths[0] == 0
    if not (empty_blob or all(type(length) is int and 0 < length <= CHUNK_SIZE for length in lengths)):
        raise InvalidRecord(f"chunk lengths are 1 to {CHUNK_SIZE} bytes (an empty blob is one empty chunk)")
    return Manifest(tuple(roots), tuple(lengths))


def check_manifest_value(key: bytes, value: Value) -> None:
    """The rule for `BLOB_MANIFEST_TYPE`: signed, in the clear, and stored under its own blob id."""
    if not value.signed or value.encrypted:
        raise InvalidRecord("a manifest is signed and in the clear")
    blob_id = decode_manifest(value.data).blob_id
    if key != blob_key(blob_id) or value.id != blob_value_id(blob_id):
        raise InvalidRecord("a manifest must be stored in its blob's shard, under its blob's value id")


def signed_manifest(identity: Identity, manifest: Manifest) -> Value:
    blob_id = manifest.blob_id
    value = Value(blob_value_id(blob_id), manifest.encode(), BLOB_MANIFEST_TYPE, seq=1)
    return sign_value(identity, blob_key(blob_id), value)


def manifests_in(values: list[Value]) -> list[Manifest]:
    """The manifests among a shard's (checked) values."""
    return [decode_manifest(value.data) for value in values if value.type == BLOB_MANIFEST_TYPE]


def find_manifest(values: list[Value], blob_id: bytes) -> Manifest | None:
    """The manifest of `blob_id` among a shard's (checked) values."""
    return next((manifest for manifest in manifests_in(values) if manifest.blob_id == blob_id), None)


def blob_id_from_hex(text: str) -> bytes | None:
    """A blob id written as 64 lowercase hex characters (as routes and the CLI take it), else None."""
    return bytes.fromhex(text) if re.fullmatch(r"[0-9a-f]{64}", text) else None
