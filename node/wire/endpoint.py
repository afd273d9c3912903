"""The UDP RPC endpoint: sends requests and matches replies, serves handlers, and moves big messages.

Two kinds of RPC share one socket and one framing:

* *plain* RPCs (`ping`, `store`, `find_node`, `find_value`) speak exactly as `kademlia`/`rpcudp` do:
  args are whatever the stock package sends, the reply is the bare result;
* *dhtmesh* RPCs (`dm_*`) take `[sender_id, body_dict]` and answer an envelope (`messages.py`).

No datagram this endpoint sends to a dhtmesh peer exceeds `MAX_DATAGRAM`: bigger messages move in
pieces (`fragments.py`). A handler may be async: its reply goes out when it is ready (`answering.py`). A call waits a
few measured round-trip times (`rtt.py`), then retries once and waits the full `timeout` before
failing; at most `max_in_flight` calls are outstanding at a time.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from dhtmesh.node.stats import Counters
from dhtmesh.node.trace import RpcDone, RpcSent, Tracer
from dhtmesh.node.wire import codec
from dhtmesh.node.wire.answering import Answering, Later
from dhtmesh.node.wire.errors import RpcFailure, RpcRefused, RpcTimeout
from dhtmesh.node.wire.fragments import TRANSFER_RPCS, Fragments
from dhtmesh.node.wire.messages import (
    NONCE_SIZE,
    REFLECTION_FACTOR,
    UNPROVEN,
    MeshHandler,
    OnStray,
    PlainHandler,
    Prover,
    Reply,
    Request,
    Sealed,
    StrayNonce,
    is_node_id,
    new_nonce,
    opened,
    padded,
)
from dhtmesh.node.wire.ratelimit import Address, RequestLimiter
from dhtmesh.node.wire.rtt import RttEstimator

# Re-exported: the RPC modules name what they send, receive and raise from the endpoint they talk to.
__all__ = ["NONCE_SIZE", "UNPROVEN", "Endpoint", "Reply", "Request", "RpcFailure", "RpcRefused", "new_nonce"]

log = logging.getLogger(__name__)

UNPROVEN_RETRIES = 4
UNPROVEN_BACKOFF = 0.05
RECEIVE_BUFFER = 4 * 1024 * 1024


@dataclass(slots=True)
class _Pending:
    address: Address
    future: asyncio.Future


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
        self._fragments = Fragments(self._call_piece)
        self._mesh: dict[str, MeshHandler] = {
            "dm_part": self._fragments.serve_part,
            "dm_done": self._serve_done,
            "dm_pull": self._fragments.serve_pull,
        }
        self._answering = Answering(counters, self._finish, self._answer)  # async handlers' replies
        self.transport: asyncio.DatagramTransport | None = None

    # ---- set-up -------------------------------------------------------------------------------

    def route_plain(self, name: str, handler: PlainHandler) -> None:
        self._plain[name] = handler

    def route(self, name: str, handler: MeshHandler) -> None:
        assert name.startswith("dm_") and name not in TRANSFER_RPCS
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

    async def close(self) -> None:
        """Stop the async handlers still at work, then the socket."""
        await self._answering.close()
        if self.transport is not None:
            self.transport.close()

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
            if isinstance(reply, Later):  # an async handler's: sent when it is ready
                self._answering.answer(frame.message_id, reply)
            else:
                self._answer(frame.message_id, address, reply)
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

    def _serve_mesh(self, address: Address, name: str, args: list, proven: bool, room: float) -> Sealed | Later:
        """The sealed envelope answering a `dm_*` request, or, when its handler is async (an `async def`),
        the work that will make it, not yet started."""
        if not isinstance(args, list) or len(args) != 2 or not is_node_id(args[0]) or not isinstance(args[1], dict):
            self._counters.add("malformed_requests")
            return Sealed.of({"err": "malformed request: expected [sender_id(20 bytes), body(map)]"})
        request = Request(address, name, args[0], args[1], proven, room - codec.HEADER_SIZE)
        try:
            result = self._mesh[name](request)
        except Exception as error:
            return self._seal(request, self._refusal(name, error))
        if asyncio.iscoroutine(result):
            return Later(request, result)
        # A `dm_done`'s payload is the inner request's envelope: now, or later when its handler is async.
        if isinstance(result, Later):
            return Later(request, self._inner_envelope(result), inner=result)
        return self._seal(request, {"ok": result.envelope if isinstance(result, Sealed) else result})

    async def _inner_envelope(self, later: Later) -> dict:
        return (await self._finish(later)).envelope

    async def _finish(self, later: Later) -> Sealed:
        """An async handler's envelope, once its payload is ready (the inner reply of a `dm_done` too)."""
        try:
            envelope: dict[str, Any] = {"ok": await later.work}
        except Exception as error:
            envelope = self._refusal(later.request.name, error)
        return self._seal(later.request, envelope)

    def _answer(self, message_id: bytes, address: Address, sealed: Sealed) -> None:
        self._send_datagram(codec.frame(codec.RESPONSE, message_id, sealed.encoded), address)

    def _refusal(self, name: str, error: Exception) -> dict:
        if isinstance(error, RpcRefused):
            self._counters.add("refused_requests")
            return {"err": str(error)}
        log.error("handler %s failed", name, exc_info=error)
        self._counters.add("handler_errors")
        return {"err": "internal error"}

    def _seal(self, request: Request, envelope: dict) -> Sealed:
        """`envelope` with the proof its nonce asks for, fitted to what the asker may be sent."""
        nonce = request.body.get("n")
        proof = self._prove(nonce) if isinstance(nonce, bytes) and len(nonce) == NONCE_SIZE else None
        if proof is not None:
            envelope["pf"] = proof
        return self._fit(envelope, request, proof)

    def _fit(self, envelope: dict, request: Request, proof: list | None) -> Sealed:
        """`envelope` if it fits a datagram (and the room an unproven address has), else held for
        `dm_pull` and said so; an unproven address gets `UNPROVEN` instead of anything bigger."""
        encoded = codec.pack(envelope)
        if len(encoded) <= min(request.room, codec.MAX_DATAGRAM - codec.HEADER_SIZE):
            return Sealed(envelope, encoded)
        if not request.proven:
            self._counters.add("unproven_replies_refused")
            return Sealed.of({"err": UNPROVEN} | ({"pf": proof} if proof is not None else {}))
        held = self._fragments.hold_reply(request.address, encoded)
        if held is None:
            self._counters.add("oversized_replies")
            return Sealed.of({"err": "reply too large"})
        if "err" in held:
            self._counters.add("transfers_refused")
        return Sealed.of(held)

    # ---- serving the transfer RPCs ------------------------------------------------------------

    def _serve_done(self, request: Request) -> Sealed | Later:
        inner = self._fragments.take_request(request)
        if not (isinstance(inner, list) and len(inner) == 2 and isinstance(inner[0], str)):
            raise RpcRefused("transfer holds no request")
        name, args = inner
        if name not in self._mesh or name in TRANSFER_RPCS or not isinstance(args, list):
            raise RpcRefused("transfer holds no request")
        # The inner reply is the real answer: hand it back whole, as this RPC's payload.
        return self._serve_mesh(request.address, name, args, request.proven, request.room)

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
            body = padded(name, body, self.node_id)
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
        # `dm_done`'s payload is the inner request's own envelope.
        return await self._open(address, await self._fragments.send_in_pieces(address, payload))

    async def _open(self, address: Address, envelope: Any) -> Reply:
        if isinstance(envelope, dict) and "big" in envelope:
            envelope = await self._fragments.pull(address, envelope["big"])
        return opened(envelope)

    async def _call_piece(self, address: Address, name: str, body: dict) -> Any:
        """One transfer RPC (`dm_part`, `dm_done`, `dm_pull`): its reply's payload."""
        envelope = await self._exchange(address, name, codec.pack([name, [self.node_id, body]]))
        return (await self._open(address, envelope)).payload

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
        self._send_datagram(codec.encode(codec.REQUEST, message_id, [name, [self.node_id, body]]), address)

    def _send_datagram(self, datagram: bytes, address: Address) -> bool:
        if len(datagram) > codec.MAX_DATAGRAM:
            return False
        self._transmit(datagram, address)
        return True

    def _transmit(self, datagram: bytes, address: Address) -> None:
        if self.transport is None or self.transport.is_closing():
            raise RpcTimeout("endpoint closed")
        self._counters.add("datagrams_out")
        self.transport.sendto(datagram, address)
