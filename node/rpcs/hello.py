"""`dm_hello`: who a node is. The caller's nonce (`"n"`, added by the endpoint) makes the reply carry a
proof of identity (`"pf"`); the reply names the node's id and the address it saw the caller at.

Wire: request `{}` (or `{"n": nonce}`), reply `{"id": node_id, "you": [host, port]}`.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dhtmesh.node.wire.endpoint import Endpoint, Request
from dhtmesh.node.wire.messages import is_node_id
from dhtmesh.node.wire.ratelimit import Address

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

NAME = "dm_hello"


@dataclass(frozen=True, slots=True)
class HelloReply:
    node_id: bytes
    seen_as: Address | None  # the caller's address as the responder saw it (None: a peer did not say)

    def to_wire(self) -> dict:
        return {"id": self.node_id, "you": list(self.seen_as or ())}

    @classmethod
    def from_wire(cls, payload: Any) -> "HelloReply | None":
        """The reply, if it names a node id (the address seen is only informative: not checked)."""
        node_id = payload.get("id") if isinstance(payload, dict) else None
        if not is_node_id(node_id):
            return None
        seen = payload.get("you")
        ok = isinstance(seen, list) and len(seen) == 2 and isinstance(seen[0], str) and isinstance(seen[1], int)
        return cls(node_id, (seen[0], seen[1]) if ok else None)


def hello_request(nonce: bytes | None = None) -> dict:
    """A hello's body: a stateless challenge (`Admission.consider`) sends the nonce itself."""
    return {} if nonce is None else {"n": nonce}


async def call_hello(endpoint: Endpoint, address: Address, nonce: bytes) -> tuple[HelloReply | None, Any]:
    """Say hello to `address`: its reply (None if it names no node) and the proof of our `nonce`."""
    reply = await endpoint.call(address, NAME, hello_request(), nonce=nonce)
    return HelloReply.from_wire(reply.payload), reply.proof


def serve_hello(node: "DhtNode", request: Request) -> dict:
    return HelloReply(node.node_id, request.address).to_wire()
