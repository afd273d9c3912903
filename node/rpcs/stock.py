"""`ping`, `store`, `find_node` and `find_value` answered exactly as `kademlia` 2.2.3 answers them.

A stock peer stores one plain value per key (str, bytes or a number); dhtmesh keeps it as an unsigned
value whose id is derived from its content, so re-stores refresh it. A stock store passes the same
rule check as every other way in (`DhtNode.accept_store`): it cannot touch a reserved key. `find_value`
returns the newest unsigned value under the key in the stock shape `{"value": v}`.

Stock peers are never proven, so they are answered but never enter the routing table; their address
could be a spoofed victim's, so a reply is never larger than the room the endpoint gives it (a small
multiple of the request: fewer contacts, or no value), and what they store is charged to their host
within one budget shared by all stock peers.
"""

import hashlib
from typing import TYPE_CHECKING, Any

import msgpack

from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.rpcs.args import require_key
from dhtmesh.node.storage.store import stock_origin, stock_sender
from dhtmesh.node.values.types import expiry_for
from dhtmesh.node.values.value import InvalidValue, Value
from dhtmesh.node.wire import codec
from dhtmesh.node.wire.endpoint import Endpoint, RpcRefused
from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Address

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

TEXT = "text/plain"
MSGPACK = "application/msgpack"


def value_from_plain(key: bytes, plain: Any) -> Value:
    """A stock peer's plain value as a dhtmesh unsigned value (`str` keeps its type via `utype`)."""
    if isinstance(plain, bool) or isinstance(plain, int | float):
        data, utype = msgpack.packb(plain), MSGPACK
    elif isinstance(plain, str):
        data, utype = plain.encode(), TEXT
    elif isinstance(plain, bytes):
        data, utype = plain, ""
    else:
        raise InvalidValue("stock values are str, bytes or numbers")
    value_id = int.from_bytes(hashlib.sha256(key + utype.encode() + b"\0" + data).digest()[:8], "big") or 1
    return Value(value_id, data, utype=utype)


def plain_from_value(value: Value) -> Any:
    """What a stock peer's `get()` should return for a dhtmesh value."""
    if value.utype == TEXT:
        try:
            return value.data.decode()
        except UnicodeDecodeError:
            return value.data
    if value.utype == MSGPACK:
        try:
            return msgpack.unpackb(value.data)
        except Exception:
            return value.data
    return value.data


class StockRpcs:
    def __init__(self, node: "DhtNode") -> None:
        self._node = node

    def register(self, endpoint: Endpoint) -> None:
        endpoint.route_plain("ping", self.ping)
        endpoint.route_plain("store", self.store)
        endpoint.route_plain("find_node", self.find_node)
        endpoint.route_plain("find_value", self.find_value)
        endpoint.route_plain("stun", self.stun)

    def ping(self, address: Address, args: list, room: float) -> bytes:
        self._sender(args, 1)
        return self._node.node_id

    def stun(self, address: Address, args: list, room: float) -> list:
        return [address[0], address[1]]

    def store(self, address: Address, args: list, room: float) -> bool:
        """False for a value the rules refuse (a reserved key...): a stock peer has no way to hear why.
        A value no stock peer could send (a list, a map) is garbage: it gets no answer at all."""
        self._sender(args, 3)
        key = require_key(args[1])
        try:
            value = value_from_plain(key, args[2])
        except InvalidValue as error:
            raise RpcRefused(str(error)) from error
        host = host_of(address[0])
        try:
            verdict = self._node.accept_store(
                key, value, origin=stock_origin(host), ttl=expiry_for(value.type), sender=stock_sender(host)
            )
            return verdict.accepted
        except InvalidValue:
            self._node.counters.add("stores_refused")
            return False

    def find_node(self, address: Address, args: list, room: float) -> list:
        sender = self._sender(args, 2)
        key = require_key(args[1])
        return _fitting(self._node.table.closest(key, exclude=[sender]), room)

    def find_value(self, address: Address, args: list, room: float) -> Any:
        self._sender(args, 2)
        key = require_key(args[1])
        value = self._node.store.latest_unsigned(key)
        if value is not None:
            found = {"value": plain_from_value(value)}
            if len(codec.pack(found)) <= min(room, codec.MAX_DATAGRAM - codec.HEADER_SIZE):
                return found
        return self.find_node(address, args, room)

    @staticmethod
    def _sender(args: list, arity: int) -> bytes:
        if len(args) != arity:
            raise RpcRefused("wrong number of arguments")
        return require_key(args[0], "node id")


def _fitting(contacts: list[Contact], room: float) -> list:
    """The closest contacts whose list fits `room` bytes (and one datagram) once encoded."""
    budget = min(room, codec.MAX_DATAGRAM - codec.HEADER_SIZE) - 3  # 3: the list's own header, at most
    fitting = []
    for contact in contacts:
        wire = contact.to_wire()
        budget -= len(codec.pack(wire))
        if budget < 0:
            break
        fitting.append(wire)
    return fitting
