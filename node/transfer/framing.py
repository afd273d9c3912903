"""One request or answer on a stream: a msgpack header of bounded size, then an optional raw body whose
length the header states (`size`). A body may follow later than its header (a put's, once the holder
has checked the header). Everything read from a peer is bounded before it is read."""

import asyncio
import struct
from typing import Any

import msgpack

# A header names a chunk, a few indices and a signed request: well under 4 KiB. It is decoded before
# anything is checked, so it is small and its decoding bounded (a 64 KiB header of msgpack extensions
# cost ~15 ms to decode: a few dozen a second held a core).
MAX_HEADER = 4 * 1024
_UNPACK_LIMITS = {
    "max_str_len": MAX_HEADER,
    "max_bin_len": MAX_HEADER,
    "max_array_len": 128,
    "max_map_len": 32,
    "max_ext_len": 0,
}
_LENGTH = struct.Struct(">I")


class FramingError(Exception):
    """A malformed, oversized or truncated frame."""


async def read_header(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > MAX_HEADER:
            raise FramingError(f"a header is at most {MAX_HEADER} bytes")
        header = msgpack.unpackb(await reader.readexactly(length), raw=False, **_UNPACK_LIMITS)
    except asyncio.IncompleteReadError as error:
        raise FramingError("the stream ended inside a frame") from error
    except ConnectionError as error:  # reset by the peer: as much a cut-short frame
        raise FramingError("the connection was lost inside a frame") from error
    except (ValueError, TypeError) as error:  # msgpack's errors
        raise FramingError("a header is not msgpack") from error
    if not isinstance(header, dict):
        raise FramingError("a header is a msgpack map")
    return header


async def read_body(reader: asyncio.StreamReader, header: dict[str, Any], limit: int) -> bytes:
    size = header.get("size", 0)
    if not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= limit):
        raise FramingError(f"a body is 0 to {limit} bytes")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as error:
        raise FramingError("the stream ended inside a body") from error
    except ConnectionError as error:
        raise FramingError("the connection was lost inside a body") from error


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    return announce(header, len(body)) + body


def announce(header: dict[str, Any], size: int) -> bytes:
    """A header stating a body of `size` bytes that is sent later (once the peer said to go on)."""
    packed = msgpack.packb({**header, "size": size}, use_bin_type=True)
    return _LENGTH.pack(len(packed)) + packed
