"""`ping`, `store`, `find_node` and `find_value` answered exactly as `kademlia` 2.2.3 answers them.

A stock peer stores one plain value per key (str, bytes or a number); dhtmesh keeps it as an unsigned
value whose id is derived from its content, so re-stores refresh it. `find_value` returns the newest
unsigned value under the key in the stock shape `{"value": v}`. Stock peers are never proven, so they
are answered but never enter the routing table, and replies never exceed one datagram (flaw F11).
"""

import hashlib
from typing import TYPE_CHECKING, Any

import msgpack

from dhtmesh.node.rpcs.args import require_key
from dhtmesh.node.values.types import expiry_for
from dhtmesh.node.values.value import InvalidValue, Value
from dhtmesh.node.wire import codec
from dhtmesh.node.wire.endpoint import Endpoint, RpcRefused
from dhtmesh.node.wire.ratelimit import Address

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

TEXT = "text/plain"
MSGPACK = "application/msgpack"
STOCK_VALUE_ROOM = codec.MAX_DATAGRAM - 64


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

    def ping(self, address: Address, args: list) -> bytes:
        self._sender(args, 1)
        return self._node.node_id

    def stun(self, address: Address, args: list) -> list:
        return [address[0], address[1]]

    def store(self, address: Address, args: list) -> bool:
        self._sender(args, 3)
        key = require_key(args[1])
        try:
            value = value_from_plain(key, args[2])
        except InvalidValue as error:
            raise RpcRefused(str(error)) from error
        return self._node.accept_store(key, value, address, expiry_for(value.type)).accepted

    def find_node(self, address: Address, args: list) -> list:
        sender = self._sender(args, 2)
        key = require_key(args[1])
        return [c.to_wire() for c in self._node.table.closest(key, exclude=[sender])]

    def find_value(self, address: Address, args: list) -> Any:
        self._sender(args, 2)
        key = require_key(args[1])
        value = self._node.store.latest_unsigned(key)
        if value is not None and value.size <= STOCK_VALUE_ROOM:
            return {"value": plain_from_value(value)}
        return self.find_node(address, args)

    @staticmethod
    def _sender(args: list, arity: int) -> bytes:
        if len(args) != arity:
            raise RpcRefused("wrong number of arguments")
        return require_key(args[0], "node id")
