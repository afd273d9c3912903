"""Messages larger than one datagram, moved in pieces between two endpoints.

A large request goes as `dm_part` pieces followed by `dm_done`, whose reply is the inner request's own
envelope; a large reply is left with the responder (`{"big": [transfer_id, pieces]}`) and pulled back
with `dm_pull`. Both sides hold the pieces of a transfer in `Transfers`, bounded per host and in all,
and each piece of a reply is served at most `PULLS_PER_PIECE` times (a piece pulled over and over would
make us a reflector).
"""

import asyncio
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dhtmesh.node.wire import codec
from dhtmesh.node.wire.errors import ProtocolViolation, RpcFailure, RpcRefused
from dhtmesh.node.wire.messages import UNPROVEN, Request
from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Address, tally

T = TypeVar("T")

PIECE_SIZE = 1200
PULLS_PER_PIECE = 2  # one pull and one retry: a piece cannot be pulled over and over
MAX_PIECES = codec.MAX_MESSAGE // PIECE_SIZE
TRANSFER_TTL = 15.0
MAX_PENDING_BYTES_PER_PEER = 512 * 1024  # per host
MAX_PENDING_BYTES = 16 * 1024 * 1024
FRAGMENT_WINDOW = 8
TRANSFERS_FULL = "too many transfers in progress"
TRANSFER_RPCS = ("dm_part", "dm_done", "dm_pull")

PieceCall = Callable[[Address, str, dict], Awaitable[Any]]
"""`(address, name, body)`: one transfer RPC to the peer, returning its reply's payload."""


@dataclass(slots=True)
class Transfer:
    """A big message held for a peer: pieces received from it, or pieces of a reply waiting for it."""

    address: Address
    pieces: dict[int, bytes]
    count: int
    expires: float
    size: int = field(default=0)
    pulls: dict[int, int] = field(default_factory=dict)  # piece -> times served


class Transfers:
    """Big messages held for peers, oldest first, with the bytes they reserve kept as running sums per
    host and in all (no scan per piece). Every transfer lives `TRANSFER_TTL`, so they expire in the
    order they came, and are dropped from the front. A host (its ports share one share) or everyone
    over its reserve gets a refusal, never the eviction of another's transfer in progress."""

    def __init__(self) -> None:
        self._held: OrderedDict[Any, Transfer] = OrderedDict()
        self._by_host: Counter[str] = Counter()
        self._total = 0

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: Any) -> Transfer | None:
        self._purge()
        return self._held.get(key)

    def add(self, key: Any, transfer: Transfer) -> bool:
        self._purge()
        host, size = host_of(transfer.address[0]), transfer.count * PIECE_SIZE
        if self._by_host[host] + size > MAX_PENDING_BYTES_PER_PEER or self._total + size > MAX_PENDING_BYTES:
            return False
        self._held[key] = transfer
        tally(self._by_host, host, size)
        self._total += size
        return True

    def pop(self, key: Any) -> Transfer | None:
        transfer = self._held.pop(key, None)
        if transfer is not None:
            self._release(transfer)
        return transfer

    def _purge(self) -> None:
        now = time.monotonic()
        while self._held:
            key, oldest = next(iter(self._held.items()))
            if oldest.expires >= now:
                return
            self.pop(key)

    def _release(self, transfer: Transfer) -> None:
        tally(self._by_host, host_of(transfer.address[0]), -transfer.count * PIECE_SIZE)
        self._total -= transfer.count * PIECE_SIZE


class Fragments:
    """One endpoint's transfers: pieces it receives (`incoming`, keyed by address and transfer id) and
    replies it holds to be pulled (`outgoing`, keyed by transfer id)."""

    def __init__(self, call_piece: PieceCall) -> None:
        self._call_piece = call_piece
        self.incoming = Transfers()
        self.outgoing = Transfers()

    # ---- the responder's side -----------------------------------------------------------------

    def hold_reply(self, address: Address, encoded: bytes) -> dict | None:
        """Keep a reply too big for a datagram for `address` to pull: the `big` envelope that says so,
        or a refusal envelope; None if it is too big to send at all."""
        pieces = split(encoded)
        if len(pieces) > MAX_PIECES:
            return None
        transfer_id = os.urandom(8)
        held = Transfer(address, dict(enumerate(pieces)), len(pieces), time.monotonic() + TRANSFER_TTL, len(encoded))
        if not self.outgoing.add(transfer_id, held):
            return {"err": TRANSFERS_FULL}
        return {"big": [transfer_id, len(pieces)]}

    def serve_part(self, request: Request) -> bool:
        """Keep one piece of a big request."""
        if not request.proven:
            raise RpcRefused(UNPROVEN)  # a big request is reassembled and decoded only for real addresses
        address, body = request.address, request.body
        transfer_id, index, count, piece = body.get("x"), body.get("i"), body.get("c"), body.get("d")
        if not (
            isinstance(transfer_id, bytes)
            and len(transfer_id) == 8
            and isinstance(count, int)
            and 1 < count <= MAX_PIECES
            and isinstance(index, int)
            and 0 <= index < count
            and isinstance(piece, bytes)
            and len(piece) <= PIECE_SIZE
        ):
            raise RpcRefused("malformed piece")
        key = (address, transfer_id)
        transfer = self.incoming.get(key)
        if transfer is None:
            transfer = Transfer(address, {}, count, time.monotonic() + TRANSFER_TTL)
            if not self.incoming.add(key, transfer):
                raise RpcRefused(TRANSFERS_FULL)
        elif transfer.count != count:
            raise RpcRefused("piece count changed")
        if index not in transfer.pieces:
            transfer.pieces[index] = piece
            transfer.size += len(piece)
        return True

    def take_request(self, request: Request) -> Any:
        """The request a completed transfer (`dm_done`) holds, decoded (its name and args are checked by
        the caller)."""
        transfer_id = request.body.get("x")
        key = (request.address, transfer_id)
        transfer = self.incoming.pop(key) if isinstance(transfer_id, bytes) else None
        if transfer is None or len(transfer.pieces) != transfer.count:
            raise RpcRefused("incomplete transfer")
        try:
            return codec.unpack(b"".join(transfer.pieces[i] for i in range(transfer.count)))
        except codec.MalformedDatagram as error:
            raise RpcRefused("transfer holds no request") from error

    def serve_pull(self, request: Request) -> bytes:
        transfer_id, index = request.body.get("x"), request.body.get("i")
        transfer = self.outgoing.get(transfer_id) if isinstance(transfer_id, bytes) else None
        if transfer is None or transfer.address != request.address or not isinstance(index, int):
            raise RpcRefused("unknown transfer")
        piece = transfer.pieces.get(index)
        served = transfer.pulls.get(index, 0)
        if piece is None or served >= PULLS_PER_PIECE:
            raise RpcRefused("no such piece")
        transfer.pulls[index] = served + 1
        return piece

    # ---- the caller's side --------------------------------------------------------------------

    async def send_in_pieces(self, address: Address, payload: bytes) -> Any:
        """Send a big request as `dm_part` pieces, then `dm_done`: returns `dm_done`'s payload, the
        inner request's own envelope."""
        pieces = split(payload)
        if len(pieces) > MAX_PIECES:
            raise RpcRefused("request too large")
        transfer_id = os.urandom(8)

        async def send_piece(index: int, piece: bytes) -> None:
            await self._call_piece(address, "dm_part", {"x": transfer_id, "i": index, "c": len(pieces), "d": piece})

        await all_or_first_failure([send_piece(index, piece) for index, piece in enumerate(pieces)])
        return await self._call_piece(address, "dm_done", {"x": transfer_id})

    async def pull(self, address: Address, big: Any) -> dict:
        """The envelope a `{"big": [transfer_id, pieces]}` reply stands for, pulled piece by piece."""
        if not (isinstance(big, list) and len(big) == 2 and isinstance(big[0], bytes)):
            raise ProtocolViolation("bad transfer handle")
        transfer_id, count = big
        if not isinstance(count, int) or not 1 < count <= MAX_PIECES:
            raise ProtocolViolation("bad transfer size")

        async def pull(index: int) -> bytes:
            piece = await self._call_piece(address, "dm_pull", {"x": transfer_id, "i": index})
            if not isinstance(piece, bytes):
                raise ProtocolViolation("bad piece")
            return piece

        pieces = await all_or_first_failure([pull(index) for index in range(count)])
        try:
            envelope = codec.unpack(b"".join(pieces))
        except codec.MalformedDatagram as error:
            raise ProtocolViolation("reassembled reply is not msgpack") from error
        if not isinstance(envelope, dict) or "big" in envelope:
            raise ProtocolViolation("bad reassembled reply")
        return envelope


async def all_or_first_failure(jobs: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run piece transfers `FRAGMENT_WINDOW` at a time; the first failure cancels the rest and is raised
    as itself (an `RpcFailure`), not wrapped in an exception group."""
    window = asyncio.Semaphore(FRAGMENT_WINDOW)

    async def limited(job: Coroutine[Any, Any, T]) -> T:
        try:
            async with window:
                return await job
        finally:
            job.close()  # a job cancelled before its turn was never started: close it quietly

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(limited(job)) for job in jobs]
    except ExceptionGroup as failures:
        first = next((error for error in failures.exceptions if isinstance(error, RpcFailure)), None)
        if first is None:
            raise
        raise first from failures
    return [task.result() for task in tasks]


def split(encoded: bytes) -> list[bytes]:
    return [encoded[offset : offset + PIECE_SIZE] for offset in range(0, len(encoded), PIECE_SIZE)]
