"""Talking to other nodes' chunk services: put a chunk (signed; its body is sent once the holder has
accepted the header), keep it for a published blob, get one (checked against its root), and audit one
(a challenge signed by this node, whose answer is checked block by block against the root).

Nothing a holder returns is taken on trust: wrong bytes, a made-up block, a proof for another block
or another challenge, or an answer signed by someone else all raise `HolderFailed`. A client holds at
most `MAX_EXCHANGES_PER_HOLDER` streams to one holder at once, well under the holder's per-address
caps, so that its own fan-out (keeping every chunk of a big blob at once) is never refused for it.
"""

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key, verify_signature
from dhtmesh.crypto.merkle import BadProof, chunk_root, proof_from_wire, verify_block
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.storage.chunks import CHUNK_SIZE
from dhtmesh.node.transfer.chunk_service import (
    MAX_CHALLENGED_BLOCKS,
    NONCE_SIZE,
    STREAM_TIMEOUT,
    challenge_binding,
    chunk_path,
    proof_message,
    prove_path,
)
from dhtmesh.node.transfer.framing import FramingError, announce, frame, read_body, read_header
from dhtmesh.node.wire.ratelimit import Address

# A proof body: per block its 4 KiB and a path of at most ~130 hashes, plus msgpack's framing.
MAX_PROOFS_BODY = MAX_CHALLENGED_BLOCKS * (4096 + 130 * 34 + 64)
MAX_EXCHANGES_PER_HOLDER = 8  # half of a holder's per-address transfer cap (port_limits): two clients fit


class HolderFailed(Exception):
    """The holder could not be reached, refused, or answered with something that does not check."""


class HolderUnreachable(HolderFailed):
    """No answer: the connection failed or the exchange ran out of time."""


class HolderRefused(HolderFailed):
    """The holder answered with an error (`reason`: its words)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused: {reason}")
        self.reason = reason


class WrongBytes(HolderFailed):
    """The holder served bytes that are not the chunk it was asked for."""


@dataclass(frozen=True, slots=True)
class Challenge:
    root: bytes
    block_count: int
    indices: list[int]
    nonce: bytes


def new_challenge(root: bytes, block_count: int, blocks: int, rng: random.Random | None = None) -> Challenge:
    """`blocks` distinct random block indices of the chunk, and a fresh nonce."""
    chooser = rng or random.SystemRandom()
    indices = sorted(chooser.sample(range(block_count), min(blocks, block_count, MAX_CHALLENGED_BLOCKS)))
    return Challenge(root, block_count, indices, os.urandom(NONCE_SIZE))


def check_answer(challenge: Challenge, holder_id: bytes, reply: dict[str, Any], body: bytes) -> None:
    """Raise `HolderFailed` unless `reply`/`body` answer exactly this challenge, signed by `holder_id`."""
    key, signature = reply.get("key"), reply.get("sig")
    if not (isinstance(key, bytes) and isinstance(signature, bytes)):
        raise HolderFailed("the answer is not signed")
    if node_id_from_public_key(key) != holder_id:
        raise HolderFailed("the answer is signed by another node")
    message = proof_message(challenge.root, challenge.nonce, challenge.indices, body)
    if not verify_signature(key, message, signature):
        raise HolderFailed("the answer's signature does not cover this challenge")
    try:
        proofs = msgpack.unpackb(body, raw=False)
        if not (isinstance(proofs, list) and len(proofs) == len(challenge.indices)):
            raise BadProof("one proof per challenged block")
        for index, raw in zip(challenge.indices, proofs, strict=True):
            verify_block(challenge.root, proof_from_wire(raw), index, challenge.block_count)
    except (BadProof, ValueError, TypeError) as error:
        raise HolderFailed(f"proof refused: {error}") from error


@dataclass
class _Lane:
    """The streams open to one holder: a semaphore, and how many exchanges use or wait for it."""

    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_EXCHANGES_PER_HOLDER))
    users: int = 0


class ChunkClient:
    def __init__(self, identity: Identity, timeout: float = STREAM_TIMEOUT) -> None:
        self._identity = identity
        self._timeout = timeout
        self._lanes: dict[Address, _Lane] = {}  # only holders with an exchange under way

    async def put(self, address: Address, holder_id: bytes, root: bytes, data: bytes) -> bool:
        """Send chunk `root` to the holder; True if it was new there."""
        auth = sign_request(self._identity, "PUT", chunk_path(root, len(data)), b"", holder_id)
        reply, _ = await self._exchange(address, {"op": "put", "root": root, "auth": auth}, data, 0, body_later=True)
        return reply.get("new") is True

    async def keep(self, address: Address, root: bytes, blob_id: bytes) -> None:
        """Ask the holder to keep chunk `root` for the published blob `blob_id`."""
        await self._exchange(address, {"op": "keep", "root": root, "blob": blob_id}, b"", 0)

    async def get(self, address: Address, root: bytes) -> bytes:
        """Chunk `root` from the holder, checked against the root."""
        _, data = await self._exchange(address, {"op": "get", "root": root}, b"", CHUNK_SIZE)
        if await asyncio.to_thread(chunk_root, data) != root:
            raise WrongBytes("the holder returned bytes that are not this chunk")
        return data

    async def audit(self, address: Address, holder_id: bytes, challenge: Challenge) -> None:
        """Challenge the holder; returns if it proved it holds the blocks, raises `HolderFailed` if not."""
        binding = challenge_binding(challenge.nonce, challenge.indices)
        auth = sign_request(self._identity, "PROVE", prove_path(challenge.root), b"", holder_id, bound=binding)
        header = {"op": "prove", "root": challenge.root, "idx": challenge.indices, "nonce": challenge.nonce}
        reply, body = await self._exchange(address, {**header, "auth": auth}, b"", MAX_PROOFS_BODY)
        check_answer(challenge, holder_id, reply, body)

    async def _exchange(
        self, address: Address, header: dict[str, Any], body: bytes, reply_limit: int, body_later: bool = False
    ) -> tuple[dict[str, Any], bytes]:
        """One request and its answer. With `body_later`, the body is sent only once the holder says to
        go on; an answer instead of that (a refusal, or "already here") is the answer."""
        async with self._lane(address):
            try:
                async with asyncio.timeout(self._timeout):
                    reader, writer = await asyncio.open_connection(*address)
                    try:
                        writer.write(announce(header, len(body)) if body_later else frame(header, body))
                        reply = await read_header(reader)
                        if body_later and reply.get("continue") is True:
                            writer.write(body)
                            reply = await read_header(reader)
                        if "err" in reply:
                            raise HolderRefused(str(reply["err"]))
                        return reply, await read_body(reader, reply, reply_limit)
                    finally:
                        writer.close()
            except (OSError, TimeoutError, FramingError) as error:  # FramingError: a cut-short answer
                raise HolderUnreachable(f"{address[0]}:{address[1]}: {error or 'timed out'}") from error

    @asynccontextmanager
    async def _lane(self, address: Address) -> AsyncIterator[None]:
        """Wait for one of the holder's `MAX_EXCHANGES_PER_HOLDER` slots (not counted in the deadline)."""
        lane = self._lanes.setdefault(address, _Lane())
        lane.users += 1
        try:
            async with lane.slots:
                yield
        finally:
            lane.users -= 1
            if not lane.users:
                del self._lanes[address]
