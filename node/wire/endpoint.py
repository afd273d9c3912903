"""The UDP RPC endpoint: sends requests and matches replies, serves handlers, and moves big messages.

Two kinds of RPC share one socket and one framing:

* *plain* RPCs (`ping`, `store`, `find_node`, `find_value`) speak exactly as `kademlia`/`rpcudp` do:
  args are whatever the stock package sends, the reply is the bare result;
* *dhtmesh* RPCs (`dm_*`) take `[sender_id, body_dict]` and answer an envelope: `{"ok": payload}`,
  `{"err": reason}`, or `{"big": [transfer_id, pieces]}` for a reply that would not fit one datagram.
  A body may carry `"n"` (a nonce); the reply then carries `"pf"`, the responder's proof of identity.

No datagram this endpoint sends to a dhtmesh peer exceeds `MAX_DATAGRAM`: a large request goes as
`dm_part` pieces followed by `dm_done`; a large reply is left with the responder and pulled back with
`dm_pull`. A call waits a few measured round-trip times (`rtt.py`), then retries once and waits the
full `timeout` before failing; at most `max_in_flight` calls are outstanding at a time.

Work is checked before it is done: a reply is matched to a call by its message id before it is decoded
(an unsolicited one costs a lookup), and a request is rate-limited per host before it is decoded. An
address that has not proven itself (`is_trusted`) could be a spoofed victim's: a reply to it is never
larger than `REFLECTION_FACTOR` times its request (otherwise it is refused as `UNPROVEN`), it gets no
big replies and may not send big requests. A first-contact lookup request is padded so that the
answer it needs fits that bound; a call refused as `UNPROVEN` is retried for a moment while the peer
proves us. A request can also be sent with no call waiting for it (`send_request`): its reply, which
no pending call matches, is handed to `stray_nonce`/`on_stray` (stateless identity challenges).
"""

import asyncio
import logging
import math
import os
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from dhtmesh.node.stats import Counters
from dhtmesh.node.trace import RpcDone, RpcSent, Tracer
from dhtmesh.node.wire import codec
from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Address, RequestLimiter, tally
from dhtmesh.node.wire.rtt import RttEstimator

log = logging.getLogger(__name__)
T = TypeVar("T")

PIECE_SIZE = 1200
# A reply to an address that has not proven itself is at most this many times the size of its request,
# so that a spoofed request cannot make us flood its victim (BEP 5's concern; QUIC's factor is 3).
REFLECTION_FACTOR = 4
# What a request carrying a nonce is padded to: its answer may then fill a whole datagram.
PADDED_REQUEST = codec.MAX_DATAGRAM // REFLECTION_FACTOR + 1
UNPROVEN = "unproven"
TRANSFERS_FULL = "too many transfers in progress"
UNPROVEN_RETRIES = 4
UNPROVEN_BACKOFF = 0.05
PULLS_PER_PIECE = 2  # one pull and one retry: a piece cannot be pulled over and over
MAX_PIECES = codec.MAX_MESSAGE // PIECE_SIZE
TRANSFER_TTL = 15.0
MAX_PENDING_BYTES_PER_PEER = 512 * 1024  # per host
MAX_PENDING_BYTES = 16 * 1024 * 1024
NONCE_SIZE = 16
RECEIVE_BUFFER = 4 * 1024 * 1024
FRAGMENT_WINDOW = 8
_TRANSFER_RPCS = ("dm_part", "dm_done", "dm_pull")


class RpcFailure(Exception):
    """A call that got no usable answer."""


class RpcTimeout(RpcFailure):
    """No reply, even after the retry."""


class RpcRefused(RpcFailure):
    """The peer answered with an error (or a handler refuses a request: the reason goes back)."""


class ProtocolViolation(RpcFailure):
    """The peer answered something that is not a well-formed reply."""


@dataclass(frozen=True, slots=True)
class Request:
    address: Address
    name: str
    sender_id: bytes
    body: dict
    proven: bool  # the address proved itself (answered a nonce): it is not a spoofed one
    room: float  # the most bytes the reply may take (bounded for unproven addresses)


@dataclass(frozen=True, slots=True)
class Reply:
    payload: Any
    proof: Any = None


PlainHandler = Callable[[Address, list, float], Any]
"""`(address, args, room)`: the stock RPC's result, at most `room` bytes once encoded."""
StrayNonce = Callable[[bytes, Address], bytes | None]
"""`(message id, address)`: the nonce a reply no call waits for answers, if it answers one of ours."""
OnStray = Callable[[Address, bytes, Any], None]
"""`(address, nonce, envelope)`: such a reply, decoded."""
MeshHandler = Callable[[Request], Any]
Prover = Callable[[bytes], list]


@dataclass(slots=True)
class _Pending:
    address: Address
    future: asyncio.Future


@dataclass(slots=True)
class _Transfer:
    """A big message held for a peer: pieces received from it, or pieces of a reply waiting for it."""

    address: Address
    pieces: dict[int, bytes]
    count: int
    expires: float
    size: int = field(default=0)
    pulls: dict[int, int] = field(default_factory=dict)  # piece -> times served


class _Transfers:
    """Big messages held for peers, oldest first, with the bytes they reserve kept as running sums per
    host and in all (no scan per piece). Every transfer lives `TRANSFER_TTL`, so they expire in the
    order they came, and are dropped from the front. A host (its ports share one share) or everyone
    over its reserve gets a refusal, never the eviction of another's transfer in progress."""

    def __init__(self) -> None:
        self._held: OrderedDict[Any, _Transfer] = OrderedDict()
        self._by_host: Counter[str] = Counter()
        self._total = 0

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: Any) -> _Transfer | None:
        self._purge()
        return self._held.get(key)

    def add(self, key: Any, transfer: _Transfer) -> bool:
        self._purge()
        host, size = host_of(transfer.address[0]), transfer.count * PIECE_SIZE
        if self._by_host[host] + size > MAX_PENDING_BYTES_PER_PEER or self._total + size > MAX_PENDING_BYTES:
            return False
        self._held[key] = transfer
        tally(self._by_host, host, size)
        self._total += size
        return True

    def pop(self, key: Any) -> _Transfer | None:
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

    def _release(self, transfer: _Transfer) -> None:
        tally(self._by_host, host_of(transfer.address[0]), -transfer.count * PIECE_SIZE)
        self._total -= transfer.count * PIECE_SIZE


class Endpoint(asyncio.DatagramProtocol):
    def __init__(
        self,
        node_id: bytes,
        prove: Prover,
        counters: Counters,
        *,
        is_trusted: Callable[[Address], bool] = lambda address: False,
        limiter: RequestLimiter | None = None,
        timeout: float = 1.0,
        max_in_flight: int = 256,
        stray_nonce: StrayNonce = lambda message_id, address: None,
        on_stray: OnStray = lambda address, nonce, envelope: None,
        tracer: Tracer | None = None,
    ) -> None:
        self.node_id = node_id
        self._tracer = tracer if tracer is not None else Tracer()  # an empty one is false
        self._prove = prove
        self._stray_nonce = stray_nonce
        self._on_stray = on_stray
        self._counters = counters
        self._limiter = limiter or RequestLimiter()
        self._is_trusted = is_trusted
        self._rtt = RttEstimator(timeout)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[bytes, _Pending] = {}
        self._plain: dict[str, PlainHandler] = {}
        self._mesh: dict[str, MeshHandler] = {
            "dm_part": self._serve_part,
            "dm_done": self._serve_done,
            "dm_pull": self._serve_pull,
        }
        self._incoming = _Transfers()  # keyed by (address, transfer id)
        self._outgoing = _Transfers()  # keyed by transfer id
        self.transport: asyncio.DatagramTransport | None = None

    # ---- set-up -------------------------------------------------------------------------------

    def route_plain(self, name: str, handler: PlainHandler) -> None:
        self._plain[name] = handler

    def route(self, name: str, handler: MeshHandler) -> None:
        assert name.startswith("dm_") and name not in _TRANSFER_RPCS
        self._mesh[name] = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A burst of replies overflows the default ~200 KiB buffer (flaw F16); 4 MiB absorbs it.
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                log.debug("could not raise SO_RCVBUF")

    def connection_lost(self, exc: Exception | None) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(RpcTimeout("endpoint closed"))
        self._pending.clear()

    def error_received(self, exc: Exception) -> None:
        self._counters.add("socket_errors")

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    # ---- receiving ----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        address: Address = (addr[0], addr[1])
        self._counters.add("datagrams_in")
        if len(data) > codec.MAX_INCOMING:
            self._counters.add("oversized_datagrams")  # never decoded: where a flood of them would cost
            return
        if len(data) <= codec.HEADER_SIZE or data[0] not in (codec.REQUEST, codec.RESPONSE):
            self._counters.add("malformed_datagrams")
            return
        stray: bytes | None = None
        if data[0] == codec.RESPONSE:
            message_id = data[1 : codec.HEADER_SIZE]
            pending = self._pending.get(message_id)
            if pending is None or pending.address != address or pending.future.done():
                stray = self._stray_nonce(message_id, address) if pending is None else None
                if stray is None:
                    # Unknown or late id, or a reply from an address we did not ask: dropped undecoded.
                    self._counters.add("unexpected_responses")
                    return
        elif not self._limiter.allow(address, self._is_trusted(address)):
            self._counters.add("rate_limited")
            return
        try:
            frame = codec.decode(data)
        except codec.MalformedDatagram:
            self._counters.add("malformed_datagrams")
            return
        if stray is not None:
            self._on_stray(address, stray, frame.body)
        elif frame.kind == codec.RESPONSE:
            pending = self._pending.pop(frame.message_id)
            pending.future.set_result(frame.body)
        else:
            self._accept_request(frame, address, len(data))

    def _accept_request(self, frame: codec.Frame, address: Address, size: int) -> None:
        body = frame.body
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], str)):
            self._counters.add("malformed_requests")
            return
        name, args = body
        if not isinstance(args, list):
            self._counters.add("malformed_requests")
            return
        self._counters.add(f"rpc_in.{name}" if name in self._plain or name in self._mesh else "rpc_in.unknown")
        proven = self._is_trusted(address)
        room = math.inf if proven else REFLECTION_FACTOR * size
        if name in self._plain:
            self._serve_plain(frame.message_id, address, name, args, room)
        elif name in self._mesh:
            reply = self._serve_mesh(address, name, args, proven, room)
            if reply is not None:
                self._send(codec.RESPONSE, frame.message_id, reply, address)
        # Unknown names get no answer, as rpcudp does.

    def _serve_plain(self, message_id: bytes, address: Address, name: str, args: list, room: float) -> None:
        try:
            result = self._plain[name](address, args, room - codec.HEADER_SIZE)
        except RpcRefused:
            self._counters.add("refused_requests")
            return
        except Exception:
            log.exception("plain handler %s failed", name)
            self._counters.add("handler_errors")
            return
        datagram = codec.encode(codec.RESPONSE, message_id, result)
        if len(datagram) > min(room, codec.MAX_DATAGRAM):
            self._counters.add("oversized_plain_replies")
            return
        self._transmit(datagram, address)

    def _serve_mesh(self, address: Address, name: str, args: list, proven: bool, room: float) -> dict | None:
        if not isinstance(args, list) or len(args) != 2 or not _is_node_id(args[0]) or not isinstance(args[1], dict):
            self._counters.add("malformed_requests")
            return {"err": "malformed request: expected [sender_id(20 bytes), body(map)]"}
        request = Request(address, name, args[0], args[1], proven, room - codec.HEADER_SIZE)
        try:
            envelope: dict[str, Any] = {"ok": self._mesh[name](request)}
        except RpcRefused as refusal:
            self._counters.add("refused_requests")
            envelope = {"err": str(refusal)}
        except Exception:
            log.exception("handler %s failed", name)
            self._counters.add("handler_errors")
            envelope = {"err": "internal error"}
        nonce = request.body.get("n")
        proof = self._prove(nonce) if isinstance(nonce, bytes) and len(nonce) == NONCE_SIZE else None
        if proof is not None:
            envelope["pf"] = proof
        return self._fit(envelope, request, proof)

    def _fit(self, envelope: dict, request: Request, proof: list | None) -> dict:
        """Return `envelope` if it fits a datagram (and the room an unproven address has), else hold it
        for `dm_pull` and say so; an unproven address gets `UNPROVEN` instead of anything bigger."""
        encoded = codec.pack(envelope)
        if len(encoded) <= min(request.room, codec.MAX_DATAGRAM - codec.HEADER_SIZE):
            return envelope
        if not request.proven:
            self._counters.add("unproven_replies_refused")
            return {"err": UNPROVEN} | ({"pf": proof} if proof is not None else {})
        address = request.address
        pieces = _split(encoded)
        if len(pieces) > MAX_PIECES:
            self._counters.add("oversized_replies")
            return {"err": "reply too large"}
        transfer_id = os.urandom(8)
        held = _Transfer(address, dict(enumerate(pieces)), len(pieces), time.monotonic() + TRANSFER_TTL, len(encoded))
        if not self._outgoing.add(transfer_id, held):
            self._counters.add("transfers_refused")
            return {"err": TRANSFERS_FULL}
        return {"big": [transfer_id, len(pieces)]}

    # ---- serving the transfer RPCs ------------------------------------------------------------

    def _serve_part(self, request: Request) -> bool:
        if not request.proven:
            raise RpcRefused(UNPROVEN)  # a big request is reassembled and decoded only for real addresses
        body = request.body
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
        key = (request.address, transfer_id)
        transfer = self._incoming.get(key)
        if transfer is None:
            transfer = _Transfer(request.address, {}, count, time.monotonic() + TRANSFER_TTL)
            if not self._incoming.add(key, transfer):
                raise RpcRefused(TRANSFERS_FULL)
        elif transfer.count != count:
            raise RpcRefused("piece count changed")
        if index not in transfer.pieces:
            transfer.pieces[index] = piece
            transfer.size += len(piece)
        return True

    def _serve_done(self, request: Request) -> Any:
        transfer_id = request.body.get("x")
        transfer = self._incoming.pop((request.address, transfer_id)) if isinstance(transfer_id, bytes) else None
        if transfer is None or len(transfer.pieces) != transfer.count:
            raise RpcRefused("incomplete transfer")
        try:
            inner = codec.unpack(b"".join(transfer.pieces[i] for i in range(transfer.count)))
        except codec.MalformedDatagram as error:
            raise RpcRefused("transfer holds no request") from error
        if not (isinstance(inner, list) and len(inner) == 2 and isinstance(inner[0], str)):
            raise RpcRefused("transfer holds no request")
        name, args = inner
        if name not in self._mesh or name in _TRANSFER_RPCS or not isinstance(args, list):
            raise RpcRefused("transfer holds no request")
        reply = self._serve_mesh(request.address, name, args, request.proven, request.room)
        # The inner reply is the real answer: hand it back whole, as this RPC's payload.
        return reply

    def _serve_pull(self, request: Request) -> bytes:
        transfer_id, index = request.body.get("x"), request.body.get("i")
        transfer = self._outgoing.get(transfer_id) if isinstance(transfer_id, bytes) else None
        if transfer is None or transfer.address != request.address or not isinstance(index, int):
            raise RpcRefused("unknown transfer")
        piece = transfer.pieces.get(index)
        served = transfer.pulls.get(index, 0)
        if piece is None or served >= PULLS_PER_PIECE:
            raise RpcRefused("no such piece")
        transfer.pulls[index] = served + 1
        return piece

    # ---- calling ------------------------------------------------------------------------------

    async def call_plain(self, address: Address, name: str, args: list) -> Any:
        """A stock-style call: returns the bare result."""
        return await self._exchange(address, name, codec.pack([name, args]))

    async def call(
        self, address: Address, name: str, body: dict, *, nonce: bytes | None = None, pad: bool = False
    ) -> Reply:
        """A dhtmesh call: returns the payload (and the proof, when `nonce` asked for one). `pad` a first
        contact's request whose answer may fill a datagram (the peer has not proven us either). A call
        the peer refuses as `UNPROVEN` is retried a few times, backing off, while the peer proves us."""
        if nonce is not None:
            body = {**body, "n": nonce}
        if pad:
            body = _padded(name, body, self.node_id)
        for attempt in range(UNPROVEN_RETRIES + 1):
            try:
                return await self._call(address, name, body)
            except RpcRefused as refusal:
                if str(refusal) != UNPROVEN or attempt == UNPROVEN_RETRIES:
                    raise
                self._counters.add("unproven_retries")
                await asyncio.sleep(UNPROVEN_BACKOFF * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _call(self, address: Address, name: str, body: dict) -> Reply:
        payload = codec.pack([name, [self.node_id, body]])
        if len(payload) + codec.HEADER_SIZE <= codec.MAX_DATAGRAM:
            return await self._open(address, await self._exchange(address, name, payload))
        # `dm_done` answers with the inner request's own envelope as its payload.
        outer = await self._open(address, await self._send_in_pieces(address, payload))
        return await self._open(address, outer.payload)

    async def _open(self, address: Address, envelope: Any) -> Reply:
        if not isinstance(envelope, dict):
            raise ProtocolViolation("reply is not an envelope")
        if "big" in envelope:
            envelope = await self._pull(address, envelope["big"])
        if "err" in envelope:
            raise RpcRefused(str(envelope["err"])[:200])
        if "ok" not in envelope:
            raise ProtocolViolation("reply has neither ok nor err")
        return Reply(envelope["ok"], envelope.get("pf"))

    async def _send_in_pieces(self, address: Address, payload: bytes) -> Any:
        pieces = _split(payload)
        if len(pieces) > MAX_PIECES:
            raise RpcRefused("request too large")
        transfer_id = os.urandom(8)

        async def send_piece(index: int, piece: bytes) -> None:
            body = {"x": transfer_id, "i": index, "c": len(pieces), "d": piece}
            await self._open(address, await self._mesh_exchange(address, "dm_part", body))

        await _all_or_first_failure([send_piece(index, piece) for index, piece in enumerate(pieces)])
        return await self._mesh_exchange(address, "dm_done", {"x": transfer_id})

    async def _pull(self, address: Address, big: Any) -> dict:
        if not (isinstance(big, list) and len(big) == 2 and isinstance(big[0], bytes)):
            raise ProtocolViolation("bad transfer handle")
        transfer_id, count = big
        if not isinstance(count, int) or not 1 < count <= MAX_PIECES:
            raise ProtocolViolation("bad transfer size")

        async def pull(index: int) -> bytes:
            body = {"x": transfer_id, "i": index}
            reply = await self._open(address, await self._mesh_exchange(address, "dm_pull", body))
            if not isinstance(reply.payload, bytes):
                raise ProtocolViolation("bad piece")
            return reply.payload

        pieces = await _all_or_first_failure([pull(index) for index in range(count)])
        try:
            envelope = codec.unpack(b"".join(pieces))
        except codec.MalformedDatagram as error:
            raise ProtocolViolation("reassembled reply is not msgpack") from error
        if not isinstance(envelope, dict) or "big" in envelope:
            raise ProtocolViolation("bad reassembled reply")
        return envelope

    async def _mesh_exchange(self, address: Address, name: str, body: dict) -> Any:
        return await self._exchange(address, name, codec.pack([name, [self.node_id, body]]))

    async def _exchange(self, address: Address, name: str, payload: bytes) -> Any:
        """Send a request (`payload`, of RPC `name`), and return the reply body. The first attempt waits a
        few measured round trips; the retry waits the full configured timeout, so a busy peer (or a busy
        us) is not taken for dead."""
        async with self._slots:
            message_id = os.urandom(codec.MESSAGE_ID_SIZE)
            datagram = bytes((codec.REQUEST,)) + message_id + payload
            loop = asyncio.get_running_loop()
            waits = (self._rtt.timeout(address), self._rtt.max_timeout)
            started = time.monotonic()
            try:
                for attempt in range(2):
                    self._counters.add("rpc_out" if attempt == 0 else "rpc_retries")
                    if self._tracer:
                        self._tracer.rpc_sent(RpcSent(address, name, attempt))
                    # A fresh future per attempt (same message id): a late reply to the first attempt
                    # still answers the retry, and the timeout may cancel the future it waited on.
                    future = loop.create_future()
                    self._pending[message_id] = _Pending(address, future)
                    sent_at = time.monotonic()
                    self._transmit(datagram, address)
                    try:
                        async with asyncio.timeout(waits[attempt]):
                            reply = await future
                    except TimeoutError:
                        continue
                    if attempt == 0:
                        self._rtt.observe(address, time.monotonic() - sent_at)
                    if self._tracer:
                        self._tracer.rpc_done(RpcDone(address, name, True, time.monotonic() - started))
                    return reply
                self._counters.add("rpc_timeouts")
                if self._tracer:
                    self._tracer.rpc_done(RpcDone(address, name, False, time.monotonic() - started))
                raise RpcTimeout(f"no reply from {address[0]}:{address[1]}")
            finally:
                self._pending.pop(message_id, None)

    def send_request(self, address: Address, name: str, body: dict, message_id: bytes) -> None:
        """Send a dhtmesh request no call waits for; its reply goes to `on_stray` if `stray_nonce`
        recognises its message id."""
        self._send(codec.REQUEST, message_id, [name, [self.node_id, body]], address)

    def _send(self, kind: int, message_id: bytes, body: Any, address: Address) -> bool:
        datagram = codec.encode(kind, message_id, body)
        if len(datagram) > codec.MAX_DATAGRAM:
            return False
        self._transmit(datagram, address)
        return True

    def _transmit(self, datagram: bytes, address: Address) -> None:
        if self.transport is None or self.transport.is_closing():
            raise RpcTimeout("endpoint closed")
        self._counters.add("datagrams_out")
        self.transport.sendto(datagram, address)


async def _all_or_first_failure(jobs: list[Coroutine[Any, Any, T]]) -> list[T]:
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


def _padded(name: str, body: dict, node_id: bytes) -> dict:
    """`body` with a `pad` field that brings its request to `PADDED_REQUEST` bytes, so that a peer that
    has not proven us may answer it with a full datagram."""
    size = codec.HEADER_SIZE + len(codec.pack([name, [node_id, body]]))
    return body if size >= PADDED_REQUEST else {**body, "pad": bytes(PADDED_REQUEST - size)}


def _split(encoded: bytes) -> list[bytes]:
    return [encoded[offset : offset + PIECE_SIZE] for offset in range(0, len(encoded), PIECE_SIZE)]


def _is_node_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == 20


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)
