"""Datagram framing exactly as `rpcudp` 5.0.1 frames it, with decoding that cannot be made to explode.

A datagram is 1 type byte (0x00 request, 0x01 response), a 20-byte message id, then msgpack:
`[name, args]` for a request, the bare result for a response.
"""

from dataclasses import dataclass
from typing import Any

import msgpack

REQUEST = 0x00
RESPONSE = 0x01
MESSAGE_ID_SIZE = 20
HEADER_SIZE = 1 + MESSAGE_ID_SIZE
# The most dhtmesh ever sends to a peer: fits a 1,500-byte MTU with IPv6 and UDP headers to spare.
MAX_DATAGRAM = 1400
# The most it will read from a peer: a full Ethernet frame's UDP payload. dhtmesh peers send at most
# MAX_DATAGRAM and stock peers' messages are small, so a larger datagram is refused unread: it could
# only be a way to make decoding expensive (64 KB of empty lists took ~7 ms to decode).
MAX_INCOMING = 1472
# The most a message reassembled from pieces may hold: a 64 KiB value plus its envelope.
MAX_MESSAGE = 96 * 1024
# msgpack limits: no single string, binary or container larger than a message could hold.
_UNPACK_LIMITS = {
    "max_str_len": MAX_MESSAGE,
    "max_bin_len": MAX_MESSAGE,
    "max_array_len": 4096,
    "max_map_len": 1024,
    "max_ext_len": 0,
}


class MalformedDatagram(ValueError):
    """A datagram that is not a well-formed rpcudp frame."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    message_id: bytes
    body: Any


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(raw: bytes) -> Any:
    """Decode msgpack with size limits; nesting is bounded by msgpack's own stack limit."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, **_UNPACK_LIMITS)
    except Exception as error:  # msgpack raises a dozen types for bad input; all mean "malformed"
        raise MalformedDatagram(f"bad msgpack: {type(error).__name__}") from error


def encode(kind: int, message_id: bytes, body: Any) -> bytes:
    return frame(kind, message_id, pack(body))


def frame(kind: int, message_id: bytes, packed: bytes) -> bytes:
    """A datagram of a body already in msgpack."""
    return bytes((kind,)) + message_id + packed


def decode(datagram: bytes) -> Frame:
    if len(datagram) <= HEADER_SIZE or len(datagram) > MAX_INCOMING:
        raise MalformedDatagram("bad datagram size")
    kind = datagram[0]
    if kind not in (REQUEST, RESPONSE):
        raise MalformedDatagram("unknown frame type")
    return Frame(kind, datagram[1:HEADER_SIZE], unpack(datagram[HEADER_SIZE:]))
