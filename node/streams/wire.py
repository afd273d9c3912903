"""The streams' frames on a node's TCP port (`transfer.framing`): a request is a header
`{op, rid, size}` and a msgpack body of its arguments; an answer is `{rid, size}` and a msgpack body
`{"ok": ...}` or `{"err": kind, "msg": text, ...}`. Requests on one connection are pipelined (matched by
`rid`). The first request on a connection is a signed hello (`HELLO`) that names the calling node. A
followed request (`FOLLOW`) has an answer per change until the caller sends `UNFOLLOW` with its `rid`.
"""

import asyncio
from typing import Any

import msgpack

from dhtmesh.node.transfer.framing import FramingError, frame, read_body, read_header

HELLO = "s.hello"
FOLLOW = "s.follow"  # a read answered again at each commit, until the caller sends UNFOLLOW {rid}
UNFOLLOW = "s.unfollow"
HELLO_PATH = "/streams/hello"
HELLO_METHOD = "STREAM"
MAX_ENTRY = 1024 * 1024
MAX_BATCH = 1000  # entries
MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_BODY = MAX_BATCH_BYTES + 64 * 1024
_BODY_LIMITS = {
    "max_str_len": 64 * 1024,
    "max_bin_len": MAX_ENTRY + 64 * 1024,
    "max_array_len": 4 * MAX_BATCH,
    "max_map_len": 4 * MAX_BATCH,
    "max_ext_len": 0,
}


def request(op: str, rid: int, args: dict[str, Any]) -> bytes:
    return frame({"op": op, "rid": rid}, msgpack.packb(args, use_bin_type=True))


def answer(rid: int, body: dict[str, Any]) -> bytes:
    return frame({"rid": rid}, msgpack.packb(body, use_bin_type=True))


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], dict[str, Any]]:
    """The next frame's header and decoded body; raises FramingError."""
    header = await read_header(reader)
    return header, await read_body_of(reader, header)


async def read_body_of(reader: asyncio.StreamReader, header: dict[str, Any]) -> dict[str, Any]:
    """The decoded body of a frame whose header was read already."""
    raw = await read_body(reader, header, MAX_BODY)
    try:
        body = msgpack.unpackb(raw, raw=False, **_BODY_LIMITS) if raw else {}
    except (ValueError, TypeError) as error:
        raise FramingError("a body is not msgpack") from error
    if not isinstance(body, dict):
        raise FramingError("a body is a msgpack map")
    return body
