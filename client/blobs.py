"""Blobs through the proxy, streamed both ways: an upload from any async source of bytes, a download
read piece by piece (whole, or a `Range` of it) and checked against its length."""

import json
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from dhtmesh.api import paths
from dhtmesh.api.shapes import BlobStored
from dhtmesh.client.errors import BadAnswer, CutShort
from dhtmesh.client.transport import Transport

PIECE = 1024 * 1024
# A blob moves for as long as it takes, but a farmer silent for 5 minutes is not coming back.
BLOB_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=300)


class BlobDownload:
    """An open blob download: `length` (the bytes to come, when the node said) and `pieces()`."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.length = response.content_length
        self.status = response.status

    async def pieces(self, size: int = PIECE) -> AsyncIterator[bytes]:
        """The body, up to `size` bytes a piece; `CutShort` when it ends before `length`."""
        received = 0
        try:
            async for piece in self._response.content.iter_chunked(size):
                received += len(piece)
                yield piece
        except aiohttp.ClientPayloadError as error:
            message = f"the blob was cut short after {received} bytes (a chunk no holder served?)"
            raise CutShort(message, received) from error
        if self.length is not None and received != self.length:
            raise CutShort(f"the blob ended after {received} of {self.length} bytes", received)


class BlobRoutes:
    """`/api/blob`; mixed into `Client`, which gives the transport."""

    transport: Transport

    async def put_blob(self, body: bytes | AsyncIterable[bytes], size: int | None = None) -> BlobStored:
        """Store `body` as a blob on the mesh's farmers (an async source is streamed; `size`, when
        known, lets the node refuse one over its limit before a byte is sent)."""
        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        async with self.transport.response("POST", paths.BLOBS, data=body, headers=headers, timeout=BLOB_TIMEOUT) as r:
            status, text = r.status, await r.text()
        if status != 201:  # the proxy answers a stored blob with 201 Created, and nothing else
            raise BadAnswer(f"{paths.BLOBS}: the node answered {status}, not 201 with the blob stored")
        try:
            return BlobStored(**json.loads(text))
        except (ValueError, TypeError) as error:
            raise BadAnswer(f"{paths.BLOBS}: the node's answer is not a blob's id, size and chunks") from error

    @asynccontextmanager
    async def open_blob(self, blob_id: str, byte_range: str | None = None) -> AsyncIterator[BlobDownload]:
        """The blob `blob_id` (64 hex), or the part `byte_range` (`bytes=START-END`) of it, opened."""
        headers = {"Range": byte_range} if byte_range else {}
        path = paths.blob_path(blob_id)
        async with self.transport.response("GET", path, headers=headers, timeout=BLOB_TIMEOUT) as response:
            yield BlobDownload(response)

    async def read_blob(self, blob_id: str, byte_range: str | None = None) -> bytes:
        """The blob (or the part `byte_range` of it), whole."""
        async with self.open_blob(blob_id, byte_range) as download:
            return b"".join([piece async for piece in download.pieces()])
