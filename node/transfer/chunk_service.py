"""The chunk service a farming node runs on its TCP port (`port.Port` hands it every connection whose
first request is a chunk op): it stores the chunks other nodes send it
(each put signed by the sender, for this node), keeps them once their blob is published (`keep`, which
the injected keeper checks against the mesh), serves them, and proves it holds them to the registered
farmers that audit it.

A proof answers a challenge (a chunk, block indices, a nonce) with those blocks and their Merkle
paths, signed by the holder together with the nonce, so an answer recorded earlier cannot be replayed
to a new challenge, nor an answer passed off as another holder's.

Every request is checked before it costs this node memory or hashing: the port refuses a connection
over its address's or its own cap unread and waits `HEADER_TIMEOUT` at most for the first header
(`port_limits`); a put is verified from its header alone (the uploader signs the chunk's root and
size, and the bytes must hash to the root), and its body is asked for only then; a challenge must be
signed by a registered farmer, at a bounded rate, and is answered from trees kept for recently
challenged chunks (`proof_trees`). Every refusal is counted in the node's counters.
"""

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.crypto.request_auth import ReplayGuard, RequestAuthError, verify_request
from dhtmesh.node.stats import Counters, ErrorLog
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ROOT_SIZE, ChunkRefused, ChunkStore
from dhtmesh.node.transfer.framing import FramingError, frame, read_body
from dhtmesh.node.transfer.port_limits import (
    MAX_READS,
    MAX_READS_PER_ADDRESS,
    MAX_TRANSFERS,
    MAX_TRANSFERS_PER_ADDRESS,
    SEND_TIMEOUT,
    ProveRates,
)
from dhtmesh.node.transfer.proof_trees import ProofTrees
from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Full, RequestLimiter, Slots

STREAM_TIMEOUT = 30.0  # seconds for a whole exchange: a 4 MiB chunk on a slow link, not a stalled peer
MAX_CHALLENGED_BLOCKS = 64
NONCE_SIZE = 16
_PROOF_DOMAIN = b"dhtmesh/proof/v1\n"

NOT_HELD = "chunk not held here"
NOT_AUDITOR = "not a registered auditor"
TOO_MANY_REQUESTS = "too many requests"
REFUSED = "chunk_port_refused"  # the counter of every error answer; the reasons have their own


class Refused(Exception):
    """A request the service answers with an error; `counter` names the reason's own counter."""

    def __init__(self, reason: str, counter: str | None = None) -> None:
        super().__init__(reason)
        self.counter = counter


Keeper = Callable[[bytes, bytes], Awaitable[None]]
"""Keep chunk `root` for blob `blob_id` for good; raises `Refused` (not held, no such blob...)."""

MayAudit = Callable[[bytes], Awaitable[bool]]
"""Whether the node with this id may challenge this holder (in `dhtmesh run`: a registered farmer)."""


async def _nobody(_: bytes) -> bool:
    return False


def chunk_path(root: bytes, size: int) -> str:
    """What a signed put names as its path: the chunk and its size, so that the header alone can be
    checked (the bytes are bound by the root: the store refuses bytes that do not hash to it)."""
    return f"/chunks/{root.hex()}/{size}"


def prove_path(root: bytes) -> str:
    """What a signed challenge names as its path."""
    return f"/prove/{root.hex()}"


def challenge_binding(nonce: bytes, indices: list[int]) -> str:
    """What a signed challenge binds besides its path: its nonce and block indices."""
    return f"{nonce.hex()} {','.join(map(str, indices))}"


def proof_message(root: bytes, nonce: bytes, indices: list[int], proofs_body: bytes) -> bytes:
    """What a holder signs with its answer: the challenge it answers and the answer itself."""
    packed_indices = msgpack.packb(indices)
    return _PROOF_DOMAIN + root + nonce + hashlib.sha256(packed_indices + proofs_body).digest()


def _root(header: dict[str, Any]) -> bytes:
    root = header.get("root")
    if not (isinstance(root, bytes) and len(root) == ROOT_SIZE):
        raise Refused("root must be 32 bytes")
    return root


def _body_size(header: dict[str, Any]) -> int:
    size = header.get("size")
    if not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= CHUNK_SIZE):
        raise Refused(f"a body is 0 to {CHUNK_SIZE} bytes")
    return size


def _challenge(header: dict[str, Any]) -> tuple[bytes, bytes, list[int]]:
    """The challenge's root, nonce and block indices, well-formed (the holder checks them against the chunk)."""
    root, nonce, indices = _root(header), header.get("nonce"), header.get("idx")
    if not (isinstance(nonce, bytes) and len(nonce) == NONCE_SIZE):
        raise Refused(f"nonce must be {NONCE_SIZE} bytes")
    if not (
        isinstance(indices, list)
        and 0 < len(indices) <= MAX_CHALLENGED_BLOCKS
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices)
    ):
        raise Refused(f"idx must be 1 to {MAX_CHALLENGED_BLOCKS} block indices of this chunk")
    return root, nonce, indices


class ChunkService:
    def __init__(
        self,
        identity: Identity,
        chunks: ChunkStore,
        keeper: Keeper | None = None,
        *,
        may_audit: MayAudit = _nobody,
        counters: Counters | None = None,
    ) -> None:
        self._identity = identity
        self.chunks = chunks
        self._keeper = keeper
        self._may_audit = may_audit
        self.counters = counters or Counters()
        self._errors = ErrorLog(self.counters, "chunk_port_internal_errors")
        self._guard = ReplayGuard()
        self._requests = RequestLimiter(total_rate=2000.0, per_peer_rate=200.0)  # keeps the guard from filling
        self._transfers = Slots("transfers", MAX_TRANSFERS, MAX_TRANSFERS_PER_ADDRESS)
        self._reads = Slots("reads", MAX_READS, MAX_READS_PER_ADDRESS)
        self._proves = ProveRates()
        self._trees = ProofTrees(chunks, on_build=lambda: self.counters.add("chunk_port_trees_built"))

    @property
    def refused(self) -> int:
        """Requests answered with an error (caps, deadlines, bad frames, signatures, chunks)."""
        return self.counters.get(REFUSED)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, header: dict[str, Any]) -> None:
        """Serve one connection, whose first request's `header` the port read."""
        group = host_of(str((writer.get_extra_info("peername") or ("",))[0]))
        with contextlib.ExitStack() as held:  # the slots this connection holds, freed when it ends
            connection = _Connection(reader, writer, group, held)
            try:
                reply, body = await self._request(connection, header)
            except Refused as refusal:
                self.counters.add(REFUSED)
                if refusal.counter:
                    self.counters.add(refusal.counter)
                reply, body = {"err": str(refusal)}, b""
            except Exception as error:  # our own bug or a failing disk: the peer still gets an answer
                self._errors.internal(error, "the chunk port")
                reply, body = {"err": "internal error"}, b""
            await _send(writer, reply, body)

    async def _request(self, connection: "_Connection", header: dict[str, Any]) -> tuple[dict, bytes]:
        try:
            async with asyncio.timeout(STREAM_TIMEOUT):
                if not self._requests.allow_host(connection.group):
                    raise Refused(TOO_MANY_REQUESTS, "chunk_port_rate_limited")
                return await self._answer(header, connection)
        except FramingError as error:
            raise Refused(str(error), "chunk_port_bad_frames") from error
        except TimeoutError as error:
            raise Refused("timed out", "chunk_port_timeouts") from error

    async def _answer(self, header: dict[str, Any], connection: "_Connection") -> tuple[dict, bytes]:
        operation = header.get("op")
        if operation == "put":
            return await self._put(header, connection)
        if operation == "get":
            return await self._get(header, connection)
        if operation == "prove":
            return await self._prove(header, connection.group)
        if operation == "keep":
            return await self._keep(header)
        raise Refused("op must be put, keep, get or prove")

    async def _get(self, header: dict[str, Any], connection: "_Connection") -> tuple[dict, bytes]:
        root = _root(header)
        connection.take(self._reads)  # until the chunk is sent
        data = await self.chunks.get(root)
        if data is None:
            raise Refused(NOT_HELD)
        return {"ok": True}, data

    async def _keep(self, header: dict[str, Any]) -> tuple[dict, bytes]:
        root, blob_id = _root(header), header.get("blob")
        if not (isinstance(blob_id, bytes) and len(blob_id) == ROOT_SIZE):
            raise Refused("blob must be a 32-byte blob id")
        if self._keeper is None:
            raise Refused("this node keeps no chunks for blobs")
        await self._keeper(root, blob_id)
        return {"ok": True}, b""

    async def _put(self, header: dict[str, Any], connection: "_Connection") -> tuple[dict, bytes]:
        """Check the header, then say "continue" and read the body (the uploader sends it only then)."""
        root, size = _root(header), _body_size(header)
        self._authenticate(header, "PUT", chunk_path(root, size))
        if self.chunks.has(root):
            return {"ok": True, "new": False}, b""  # answered before the body: it is not sent
        try:
            self.chunks.check_room(size)
        except ChunkRefused as error:
            raise Refused(str(error)) from error
        connection.take(self._transfers)
        connection.writer.write(frame({"continue": True}))
        body = await read_body(connection.reader, header, CHUNK_SIZE)
        try:
            stored = await self.chunks.put(root, body)
        except ChunkRefused as error:
            raise Refused(str(error)) from error
        return {"ok": True, "new": stored}, b""

    async def _prove(self, header: dict[str, Any], group: str) -> tuple[dict, bytes]:
        if not self._proves.allow_address(group):
            raise Refused(TOO_MANY_REQUESTS, "chunk_port_rate_limited")
        root, nonce, indices = _challenge(header)
        auditor = self._authenticate(header, "PROVE", prove_path(root), challenge_binding(nonce, indices))
        if not await self._may_audit(auditor):
            raise Refused(NOT_AUDITOR, "chunk_port_not_auditor")
        if not self._proves.allow_auditor(auditor):
            raise Refused(TOO_MANY_REQUESTS, "chunk_port_rate_limited")
        blocks = self.chunks.block_count(root)
        if blocks is None:
            raise Refused(NOT_HELD)
        if max(indices) >= blocks:
            raise Refused(f"idx must be 1 to {MAX_CHALLENGED_BLOCKS} block indices of this chunk")
        return await self._answer_challenge(root, nonce, indices)

    async def _answer_challenge(self, root: bytes, nonce: bytes, indices: list[int]) -> tuple[dict, bytes]:
        """The signed proofs of a checked challenge (tests' cheating holders answer otherwise)."""
        proofs = await self._trees.prove(root, indices)
        if proofs is None:
            raise Refused(NOT_HELD)
        body = msgpack.packb([proof.to_wire() for proof in proofs], use_bin_type=True)
        signature = self._identity.sign(proof_message(root, nonce, indices, body))
        return {"ok": True, "key": self._identity.public_key, "sig": signature}, body

    def _authenticate(self, header: dict[str, Any], method: str, path: str, bound: str = "") -> bytes:
        """The signer's node id, if the request is signed for this node, fresh and new."""
        auth = header.get("auth")
        if not (isinstance(auth, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in auth.items())):
            raise Refused("auth must be a map of the signed request's headers", "chunk_port_bad_signatures")
        try:
            key = verify_request(auth, method, path, b"", self._identity.node_id, self._guard, bound=bound)
        except RequestAuthError as error:
            raise Refused(f"bad signature: {error}", "chunk_port_bad_signatures") from error
        return node_id_from_public_key(key)


@dataclass(frozen=True, slots=True)
class _Connection:
    """One client's connection: its streams, its host (`netgroup.host_of`) and the slots it holds."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    group: str
    held: contextlib.ExitStack

    def take(self, slots: Slots) -> None:
        """One of `slots` until the connection ends, or a refusal at once."""
        try:
            self.held.enter_context(slots.held(self.group))
        except Full as full:
            raise Refused(str(full), f"chunk_port_{full.what}_over_{full.scope}_cap") from full


async def _send(writer: asyncio.StreamWriter, reply: dict, body: bytes) -> None:
    try:
        writer.write(frame(reply, body))
        async with asyncio.timeout(SEND_TIMEOUT):
            await writer.drain()
    except (OSError, TimeoutError):
        pass  # the peer went away; nothing to tell it
    finally:
        writer.close()
