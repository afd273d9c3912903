"""What travels between endpoints: a served request, a call's reply, the handlers' shapes, nonces.

A `dm_*` request is `[name, [sender_id, body]]`; its answer an envelope: `{"ok": payload}`, `{"err":
reason}`, or `{"big": [transfer_id, pieces]}` for a reply that would not fit one datagram. A body may
carry `"n"` (a nonce); the reply then carries `"pf"`, the responder's proof of identity.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dhtmesh.node.wire import codec
from dhtmesh.node.wire.errors import ProtocolViolation, RpcRefused
from dhtmesh.node.wire.ratelimit import Address

# A reply to an address that has not proven itself is at most this many times the size of its request,
# so that a spoofed request cannot make us flood its victim (BEP 5's concern; QUIC's factor is 3).
REFLECTION_FACTOR = 4
# What a request carrying a nonce is padded to: its answer may then fill a whole datagram.
PADDED_REQUEST = codec.MAX_DATAGRAM // REFLECTION_FACTOR + 1
UNPROVEN = "unproven"
NONCE_SIZE = 16


@dataclass(frozen=True, slots=True)
class Request:
    address: Address
    name: str
    sender_id: bytes
    body: dict
    proven: bool  # the address proved itself (answered a nonce): it is not a spoofed one
    room: float  # the most bytes the reply may take (bounded for unproven addresses)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A reply's envelope as it goes out, and its msgpack: encoded once, when it is measured to fit."""

    envelope: dict
    encoded: bytes

    @classmethod
    def of(cls, envelope: dict) -> "Sealed":
        return cls(envelope, codec.pack(envelope))


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
"""A `dm_*` RPC's handler: the reply's payload, or a coroutine of it (an `async def` handler)."""
Prover = Callable[[bytes], list]


def opened(envelope: Any) -> Reply:
    """The reply an envelope (already pulled whole, if it was big) carries; its error as `RpcRefused`."""
    if not isinstance(envelope, dict):
        raise ProtocolViolation("reply is not an envelope")
    if "err" in envelope:
        raise RpcRefused(str(envelope["err"])[:200])
    if "ok" not in envelope:
        raise ProtocolViolation("reply has neither ok nor err")
    return Reply(envelope["ok"], envelope.get("pf"))


def padded(name: str, body: dict, node_id: bytes) -> dict:
    """`body` with a `pad` field that brings its request to `PADDED_REQUEST` bytes, so that a peer that
    has not proven us may answer it with a full datagram."""
    size = codec.HEADER_SIZE + len(codec.pack([name, [node_id, body]]))
    return body if size >= PADDED_REQUEST else {**body, "pad": bytes(PADDED_REQUEST - size)}


def is_node_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == 20


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)
