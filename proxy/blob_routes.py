"""Blobs over HTTP: `POST /api/blob` streams a body of any size (up to the node's limit) onto the
mesh's farmers, `GET /api/blob/{blob_id}` streams it back, whole or a `Range` of it. The node does
the work (`node/blobs/`); these handlers parse, and its refusals are answered by the error table.
"""

import contextlib
import logging
import re
from collections.abc import AsyncIterator

from aiohttp import web

from dhtmesh.api import paths
from dhtmesh.node.blobs.download import ChunkUnavailable
from dhtmesh.node.records.blob import BLOB_ID_SIZE, blob_id_from_hex
from dhtmesh.proxy.errors import BadRequest, NotFound, RangeNotSatisfiable, TooLarge
from dhtmesh.proxy.failures import CutShort
from dhtmesh.proxy.responses import json_reply
from dhtmesh.proxy.route import BLOB_LIMIT, BLOB_READER, UPLOADER, Route

log = logging.getLogger(__name__)

UPLOAD_PIECE = 256 * 1024
_BYTES = "application/octet-stream"
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


async def put_blob(request: web.Request) -> web.Response:
    limit = request.app[BLOB_LIMIT]
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"a blob is at most {limit} bytes")
    manifest = await request.app[UPLOADER].upload(request.content.iter_chunked(UPLOAD_PIECE), limit)
    blob_id = manifest.blob_id.hex()
    document = {"id": blob_id, "size": manifest.size, "chunks": len(manifest.chunk_roots)}
    response = json_reply(document, status=201)
    response.headers["Location"] = paths.BLOB.format(blob_id=blob_id)
    return response


def parse_blob_id(text: str) -> bytes:
    blob_id = blob_id_from_hex(text)
    if blob_id is None:
        raise BadRequest(f"a blob id is {BLOB_ID_SIZE * 2} lowercase hex characters")
    return blob_id


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`(start, end)` (end excluded) of a single-range `Range` header, None without one (or with an
    invalid one, which HTTP says to ignore); raises
    `RangeNotSatisfiable` for a range that does not fit the blob, `BadRequest` for one that does not parse."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.groups() == ("", ""):
        raise BadRequest("Range must be one range: bytes=START-END, bytes=START- or bytes=-LENGTH")
    first, last = match.groups()
    if first and last and int(last) < int(first):
        return None  # RFC 9110 §14.2: an invalid range is ignored; the whole blob is sent
    if not first:
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), size if not last else min(size, int(last) + 1)
    if start >= size or start >= end:
        raise RangeNotSatisfiable(f"the range is outside the blob's {size} bytes")
    return start, end


async def get_blob(request: web.Request) -> web.StreamResponse:
    blob_id = parse_blob_id(request.match_info["blob_id"])
    reader = request.app[BLOB_READER]
    manifest = await reader.manifest(blob_id)
    if manifest is None:
        raise NotFound("no such blob")
    requested = byte_range(request.headers.get("Range"), manifest.size)
    start, end = requested or (0, manifest.size)
    async with contextlib.aclosing(reader.read(manifest, start, end)) as pieces:  # its fetches end with us
        return await _send(request, blob_id, pieces, manifest.size, (start, end), requested is not None)


async def _send(
    request: web.Request,
    blob_id: bytes,
    pieces: AsyncIterator[bytes],
    size: int,
    span: tuple[int, int],
    partial: bool,
) -> web.StreamResponse:
    start, end = span
    first = await anext(pieces, b"")  # before the status line: a blob nobody serves is a 503 (ChunkUnavailable)
    response = web.StreamResponse(status=206 if partial else 200)
    response.content_type = _BYTES
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = f'"{blob_id.hex()}"'
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    await response.prepare(request)
    await response.write(first)
    try:
        async for piece in pieces:
            await response.write(piece)
    except ChunkUnavailable as error:
        # The status is sent: all we can do is cut the body short, which the client sees by its length.
        log.warning("blob %s: a chunk became unavailable mid-stream", blob_id.hex())
        raise CutShort(str(error)) from error
    await response.write_eof()
    return response


BLOB_ROUTES: list[Route] = [
    Route(
        "POST",
        paths.BLOBS,
        put_blob,
        "store the body as a blob on the mesh's farmers (streamed; any size up to the node's limit)",
        "the blob's bytes (any content type)",
        {201: "`{id, size, chunks}`", 413: "over the node's blob limit", 503: "too few farmers took it"},
        body_media=_BYTES,
    ),
    Route(
        "GET",
        paths.BLOB,
        get_blob,
        "the blob's bytes, checked chunk by chunk against its id; `Range: bytes=...` for a part",
        replies={
            200: "the blob",
            206: "the range",
            400: "bad blob id or Range",
            404: "no such blob",
            416: "range outside the blob",
            503: "a chunk is unavailable",
        },
        media=_BYTES,
        headers={"Range": "`bytes=START-END`, `bytes=START-` or `bytes=-LENGTH`: a part of the blob"},
    ),
]
