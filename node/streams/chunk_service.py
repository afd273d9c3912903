"""The chunk service a farming node runs on its stream port: it stores the chunks other nodes send it
(each put signed by the sender, for this node), keeps them once their blob is published (`keep`, which
the injected keeper checks against the mesh), serves them, and proves it holds them.

A proof answers a challenge (a chunk, block indices, a nonce) with those blocks and their Merkle
paths, signed by the holder together with the nonce, so an answer recorded earlier cannot be replayed
to a new challenge, nor an answer passed off as another holder's.
"""

import asyncio
import hashlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.merkle import blocks_of, prove_blocks, tree_over
from dhtmesh.crypto.request_auth import ReplayGuard, RequestAuthError, verify_request
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ROOT_SIZE, ChunkRefused, ChunkStore
from dhtmesh.node.streams.framing import FramingError, frame, read_body, read_header
from dhtmesh.node.wire.ratelimit import RequestLimiter

log = logging.getLogger(__name__)

STREAM_TIMEOUT = 30.0  # seconds for a whole exchange: a 4 MiB chunk on a slow link, not a stalled peer
MAX_CHALLENGED_BLOCKS = 64
NONCE_SIZE = 16
_PROOF_DOMAIN = b"dhtmesh/proof/v1\n"


NOT_HELD = "chunk not held here"


class Refused(Exception):
    """A request the service answers with an error."""


Keeper = Callable[[bytes, bytes], Awaitable[None]]
"""Keep chunk `root` for blob `blob_id` for good; raises `Refused` (not held, no such blob...)."""


def chunk_path(root: bytes) -> str:
    """What a signed put names as its path (the signature binds the chunk it stores)."""
    return f"/chunks/{root.hex()}"


def proof_message(root: bytes, nonce: bytes, indices: list[int], proofs_body: bytes) -> bytes:
    """What a holder signs with its answer: the challenge it answers and the answer itself."""
    packed_indices = msgpack.packb(indices)
    return _PROOF_DOMAIN + root + nonce + hashlib.sha256(packed_indices + proofs_body).digest()


def _root(header: dict[str, Any]) -> bytes:
    root = header.get("root")
    if not (isinstance(root, bytes) and len(root) == ROOT_SIZE):
        raise Refused("root must be 32 bytes")
    return root


class ChunkService:
    def __init__(
        self,
        identity: Identity,
        chunks: ChunkStore,
        keeper: Keeper | None = None,
        limiter: RequestLimiter | None = None,
    ) -> None:
        self._identity = identity
        self.chunks = chunks
        self._keeper = keeper
        self._guard = ReplayGuard()
        self._limiter = limiter or RequestLimiter(total_rate=2000.0, per_peer_rate=200.0)
        self._server: asyncio.Server | None = None
        self.refused = 0  # requests answered with an error (bad frames, signatures, chunks)

    async def start(self, host: str = "", port: int = 0, sock: socket.socket | None = None) -> None:
        """Listen on TCP `host:port`, or on the bound socket `sock` (raises `OSError`, e.g. EADDRINUSE)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve, host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            async with asyncio.timeout(STREAM_TIMEOUT):
                if not self._limiter.allow((str(peer[0]), 0)):
                    raise Refused("too many requests")
                reply, body = await self._answer(await read_header(reader), reader)
        except (Refused, FramingError, TimeoutError) as error:
            self.refused += 1
            reply, body = {"err": str(error) or "timed out"}, b""
        try:
            writer.write(frame(reply, body))
            async with asyncio.timeout(STREAM_TIMEOUT):
                await writer.drain()
        except (OSError, TimeoutError):
            pass  # the peer went away; nothing to tell it
        finally:
            writer.close()

    async def _answer(self, header: dict[str, Any], reader: asyncio.StreamReader) -> tuple[dict, bytes]:
        operation = header.get("op")
        if operation == "put":
            return await self._put(header, reader)
        if operation == "get":
            data = self.chunks.get(_root(header))
            if data is None:
                raise Refused(NOT_HELD)
            return {"ok": True}, data
        if operation == "prove":
            return self._prove(header)
        if operation == "keep":
            return await self._keep(header)
        raise Refused("op must be put, keep, get or prove")

    async def _keep(self, header: dict[str, Any]) -> tuple[dict, bytes]:
        root, blob_id = _root(header), header.get("blob")
        if not (isinstance(blob_id, bytes) and len(blob_id) == ROOT_SIZE):
            raise Refused("blob must be a 32-byte blob id")
        if self._keeper is None:
            raise Refused("this node keeps no chunks for blobs")
        await self._keeper(root, blob_id)
        return {"ok": True}, b""

    async def _put(self, header: dict[str, Any], reader: asyncio.StreamReader) -> tuple[dict, bytes]:
        root = _root(header)
        body = await read_body(reader, header, CHUNK_SIZE)
        auth = header.get("auth")
        if not (isinstance(auth, dict) and all(isinstance(v, str) for v in auth.values())):
            raise Refused("auth must be a map of the signed request's headers")
        try:
            verify_request(auth, "PUT", chunk_path(root), body, self._identity.node_id, self._guard)
        except RequestAuthError as error:
            raise Refused(f"bad signature: {error}") from error
        try:
            stored = self.chunks.put(root, body)
        except ChunkRefused as error:
            raise Refused(str(error)) from error
        return {"ok": True, "new": stored}, b""

    def _prove(self, header: dict[str, Any]) -> tuple[dict, bytes]:
        root, nonce, indices = _root(header), header.get("nonce"), header.get("idx")
        if not (isinstance(nonce, bytes) and len(nonce) == NONCE_SIZE):
            raise Refused(f"nonce must be {NONCE_SIZE} bytes")
        data = self.chunks.get(root)
        if data is None:
            raise Refused(NOT_HELD)
        leaves = list(blocks_of(data))
        if not (
            isinstance(indices, list)
            and 0 < len(indices) <= MAX_CHALLENGED_BLOCKS
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(leaves) for i in indices)
        ):
            raise Refused(f"idx must be 1 to {MAX_CHALLENGED_BLOCKS} block indices of this chunk")
        proofs = prove_blocks(tree_over(leaves), leaves, indices)
        body = msgpack.packb([proof.to_wire() for proof in proofs], use_bin_type=True)
        signature = self._identity.sign(proof_message(root, nonce, indices, body))
        return {"ok": True, "key": self._identity.public_key, "sig": signature}, body
