"""A data stream's record: where the stream's log lives (its homes), signed by the node that made it.

Records live in a sharded directory (`STREAMS`), a stream in the shard of its id (a hash of its sid),
so that every stream on the mesh is listed with 16 gets. A record names the stream's sid, the node
that created it (whose key signs it), its homes (up to `MAX_HOMES` (node id, host, port), closest to
the stream's id first: the first reachable one is the primary) and when it was made. The stream's
meta is not in it: meta is part of the replicated state on the homes, so any node changes it there.
"""

import hashlib
import ipaddress
import time
from dataclasses import dataclass

from dhtmesh.crypto.keys import NODE_ID_SIZE
from dhtmesh.node.records.keys import ShardedDirectory
from dhtmesh.node.records.kind import CLOCK_SKEW, InvalidRecord, RecordKind, pack, unpack
from dhtmesh.node.values.types import DAY

STREAM_TYPE = 0x5374
STREAM_EXPIRY = 7 * DAY  # re-announced while its creator or a home lives
MAX_HOMES = 3
MAX_SID = 256  # bytes of UTF-8
_ID_DOMAIN = b"dhtmesh/stream/v1"

STREAMS = ShardedDirectory(STREAM_TYPE, b"dhtmesh/streams/")

Home = tuple[bytes, str, int]  # node id, host, port (TCP and UDP)


def stream_id(sid: str) -> bytes:
    """The 20-byte id of a stream (its homes are the nodes closest to it)."""
    return hashlib.sha1(_ID_DOMAIN + sid.encode()).digest()


@dataclass(frozen=True, slots=True)
class StreamRecord:
    sid: str
    creator: bytes
    homes: tuple[Home, ...]
    created: int

    def encode(self) -> bytes:
        return pack(self.sid, self.creator, [list(home) for home in self.homes], self.created)


def decode_stream(data: bytes) -> StreamRecord:
    sid, creator, homes, created = unpack(data, "stream", 4)
    if not (isinstance(sid, str) and 0 < len(sid.encode()) <= MAX_SID):
        raise InvalidRecord(f"sid must be 1 to {MAX_SID} bytes of text")
    if not (isinstance(creator, bytes) and len(creator) == NODE_ID_SIZE):
        raise InvalidRecord("creator must be a 20-byte node id")
    if not (isinstance(homes, list) and 0 < len(homes) <= MAX_HOMES):
        raise InvalidRecord(f"homes must be 1 to {MAX_HOMES} nodes")
    checked = tuple(_home(home) for home in homes)
    if len({home[0] for home in checked}) != len(checked):
        raise InvalidRecord("homes must be distinct nodes")
    if not (type(created) is int and 0 <= created <= time.time() + CLOCK_SKEW):
        raise InvalidRecord("created must be a time, not in the future")
    return StreamRecord(sid, creator, checked, created)


def _home(raw: object) -> Home:
    if not (isinstance(raw, list) and len(raw) == 3):
        raise InvalidRecord("a home is [node id, host, port]")
    node_id, host, port = raw
    if not (isinstance(node_id, bytes) and len(node_id) == NODE_ID_SIZE):
        raise InvalidRecord("a home's node id is 20 bytes")
    if not (type(port) is int and 0 < port < 65536 and isinstance(host, str) and len(host) <= 64):
        raise InvalidRecord("a home's address is a literal IP address and a port")
    try:
        ipaddress.ip_address(host)
    except ValueError as error:
        raise InvalidRecord("a home's host is a literal IP address") from error
    return node_id, host, port


KIND = RecordKind(
    STREAM_TYPE,
    STREAM_EXPIRY,
    "a stream record",
    decode_stream,
    lambda record: stream_id(record.sid),
    STREAMS,
    signer="the node that created the stream",
    signer_of=lambda record: record.creator,
)
