"""Keys reserved for one record type, recognisable from the key alone.

A record's key is derived from what it is about (a farmer's shard, a chunk's root, a farmer's audits):
`SHA-1(domain ‖ material)`, its last `TAG_SIZE` bytes replaced by a tag of the record type over the
rest. Any node can then tell that a key belongs to a record type without knowing the material, and
refuse every other value under it: unsigned junk or another type can neither fill a holding key or a
directory shard, nor hide the records readers look for. The first 16 bytes still spread keys evenly
over the id space; a user's key (a plain SHA-1) carries a valid tag with probability 2^-32 per type.

A sharded directory (`ShardedDirectory`) is `shards` such keys for one type, a record in the shard
named by the first hex digit of its id, so that the whole directory is read with `shards` gets or
listens (`records.directory`) and each shard holds up to a key's value quota of records.
"""

import functools
import hashlib
from dataclasses import dataclass, field

from dhtmesh.crypto.keys import NODE_ID_SIZE

TAG_SIZE = 4
_TAG_DOMAIN = b"dhtmesh/reserved-key/v1"


def _tag(record_type: int, prefix: bytes) -> bytes:
    return hashlib.sha256(_TAG_DOMAIN + record_type.to_bytes(2, "big") + prefix).digest()[:TAG_SIZE]


def reserved_key(record_type: int, domain: bytes, material: bytes) -> bytes:
    """The key under which records of `record_type` about `material` live."""
    prefix = hashlib.sha1(domain + material).digest()[: NODE_ID_SIZE - TAG_SIZE]
    return prefix + _tag(record_type, prefix)


@functools.lru_cache(maxsize=65536)  # every value at every hop asks, for keys that repeat
def reserved_type(key: bytes, record_types: frozenset[int]) -> int | None:
    """The record type, among `record_types`, that `key` is reserved for; None for an ordinary key."""
    prefix, tag = key[: NODE_ID_SIZE - TAG_SIZE], key[NODE_ID_SIZE - TAG_SIZE :]
    return next((record_type for record_type in record_types if _tag(record_type, prefix) == tag), None)


@dataclass(frozen=True, slots=True)
class ShardedDirectory:
    record_type: int
    domain: bytes
    shards: int = 16
    keys: tuple[bytes, ...] = field(init=False)

    def __post_init__(self) -> None:
        keys = tuple(reserved_key(self.record_type, self.domain, b"%x" % shard) for shard in range(self.shards))
        object.__setattr__(self, "keys", keys)

    def key_for(self, record_id: bytes) -> bytes:
        """The shard that holds the record named by `record_id`."""
        return self.keys[record_id[0] * self.shards // 256]
