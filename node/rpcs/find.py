"""`dm_find` and `dm_fetch`: a lookup's question to one node, and one value fetched by reference.

`dm_find` `{"t": target[, "p": offset][, "v": true[, "w": value_id][, "y": type]][, "s": value, "ttl": s]}`
answers the closest contacts (`"nodes"`, on the first page) and, when asked for values (`"v"`), a page
of the key's values, signed ones first: small ones inline (`"vals"`), big ones as references
`[owner, id, seq]` (`"refs"`), and the next page's offset (`"more"`, nil on the last); one id (`"w"`)
is answered with its value alone. A put's lookup carries its value (`"s"`): a node that has proven the
asker stores it and says whether (`"stored"`); one that has not gives no verdict.

`dm_fetch` `{"k": key, "o": owner, "i": value_id}` → the value, or nil.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dhtmesh.node.routing.contact import Contact, contact_from_wire
from dhtmesh.node.rpcs.args import Ref, ref_from_wire, require_int, require_key
from dhtmesh.node.rpcs.storing import Carried, accept_carried
from dhtmesh.node.values.value import InvalidValue, Value, value_from_wire
from dhtmesh.node.wire.endpoint import UNPROVEN, Endpoint, Reply, Request, RpcFailure, RpcRefused
from dhtmesh.node.wire.ratelimit import Address

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

FIND = "dm_find"
FETCH = "dm_fetch"
# A find reply carries up to PAGE_ENTRIES values: small ones inline, within INLINE_BUDGET bytes in all,
# and the others as references `[owner, id, seq]` that the asker fetches once, from one replica.
PAGE_ENTRIES = 8
INLINE_VALUE_MAX = 256
INLINE_BUDGET = 512
MAX_OFFSET = 1 << 32
MAX_VALUE_ID = (1 << 64) - 1
MAX_VALUE_TYPE = (1 << 16) - 1



@dataclass(frozen=True, slots=True)
class FindRequest:
    target: bytes
    offset: int = 0
    values: bool = False  # whether values are wanted, not only contacts
    value_id: int | None = None  # only this id (with `values`)
    value_type: int | None = None  # only this type (with `values`)
    carried: Carried | None = None  # a put's value, to be stored along
    # A lookup asks every contact the same question: its wire form is made on the first call only.
    _wire: dict | None = field(default=None, init=False, compare=False, repr=False)

    def to_wire(self) -> dict:
        """The request's wire form (the same dict each time: callers copy it before adding to it)."""
        if self._wire is None:
            object.__setattr__(self, "_wire", self._make_wire())
        return self._wire  # type: ignore[return-value]

    def _make_wire(self) -> dict:
        body: dict[str, Any] = {"t": self.target}
        if self.offset:
            body["p"] = self.offset
        if self.values:
            body["v"] = True
            if self.value_id is not None:
                body["w"] = self.value_id
            if self.value_type is not None:
                body["y"] = self.value_type
        return body | (self.carried.to_wire("s") if self.carried is not None else {})

    @classmethod
    def from_wire(cls, body: dict, *, proven: bool) -> "FindRequest":
        """The request; its carried value is read only from a proven sender (an unproven one's is
        ignored: it is sent a plain store once it has proven itself)."""
        target = require_key(body.get("t"), "target")
        offset = require_int(body.get("p", 0), "page offset", 0, MAX_OFFSET)
        values = body.get("v") is True
        value_type = value_id = None
        if values:
            if "y" in body:
                value_type = require_int(body["y"], "value type", 0, MAX_VALUE_TYPE)
            if "w" in body:  # one value id: under a key, at most one owner holds it
                value_id = require_int(body.get("w"), "value id", 1, MAX_VALUE_ID)
        carried = Carried.from_wire(body, "s") if "s" in body and proven else None
        return cls(target, offset, values, value_id, value_type, carried)


@dataclass(frozen=True, slots=True)
class FindReply:
    nodes: list[Contact] | None = None  # the first page's closest contacts
    vals: list[Value] | None = None  # values inline
    refs: list[Ref] | None = None  # with `more`: a page of the key's values (not one id's)
    more: int | None = None
    stored: bool | None = None  # a carried value's verdict; None: none given
    holds: bool = field(default=False, compare=False)  # the replica offered values (inline or not)

    def to_wire(self) -> dict:
        reply: dict[str, Any] = {}
        if self.nodes is not None:
            reply["nodes"] = [c.to_wire() for c in self.nodes]
        if self.vals is not None:
            reply["vals"] = [v.to_wire() for v in self.vals]
        if self.refs is not None:
            reply |= {"refs": [list(ref) for ref in self.refs], "more": self.more}
        if self.stored is not None:
            reply["stored"] = self.stored
        return reply

    @classmethod
    def from_wire(cls, payload: Any, values: bool = True) -> "FindReply":
        """A peer's reply, whatever it sent: what is malformed is left out (flaw F7). Its values are
        read only when `values` are wanted: what a peer sends unasked is not decoded."""
        payload = payload if isinstance(payload, dict) else {}
        vals, refs = (payload.get("vals"), payload.get("refs")) if values else (None, None)
        more, stored = payload.get("more"), payload.get("stored")
        # Every lookup reads one of these per contact asked: one pass each, nothing built for what is absent.
        return cls(
            [c for item in _listed(payload.get("nodes")) if (c := contact_from_wire(item))],
            [v for raw in _listed(vals) if (v := _value_or_none(raw)) is not None] if vals else [],
            [r for ref in _listed(refs) if (r := ref_from_wire(ref)) is not None] if refs else [],
            more if type(more) is int and more > 0 else None,
            None if stored is None else stored is True,
            bool(vals or refs),
        )


def _listed(field_value: Any) -> list:
    return field_value if type(field_value) is list else []


def _value_or_none(raw: Any) -> Value | None:
    try:
        return value_from_wire(raw)
    except InvalidValue:
        return None


async def call_find(endpoint: Endpoint, address: Address, request: FindRequest, nonce: bytes | None = None) -> Reply:
    """Ask one node; a first contact (`nonce` given) gets a padded request, so that its answer may fill
    a datagram. Returns the reply undecoded, so that a first contact's proof (`Reply.proof`) is checked
    before anything it sent is read (`FindReply.from_wire`). Raises `RpcFailure`."""
    return await endpoint.call(address, FIND, request.to_wire(), nonce=nonce, pad=nonce is not None)


def serve_find(node: "DhtNode", request: Request) -> dict:
    carries = "s" in request.body and node.admission.is_proven(request.address, request.sender_id)
    find = FindRequest.from_wire(request.body, proven=carries)
    nodes = node.table.closest(find.target, exclude=[request.sender_id]) if find.offset == 0 else None
    vals: list[Value] | None = None
    refs: list[Ref] | None = None
    more = None
    if find.values and find.value_id is not None:
        vals = node.store.values_with_id(find.target, find.value_id, find.value_type)
    elif find.values:
        vals, refs, more = _values_page(node, find.target, find.offset, find.value_type)
    # A put's lookup: store the value it carries, as dm_store would, and say whether we did.
    stored = accept_carried(node, find.target, request, find.carried).accepted if find.carried else None
    return FindReply(nodes, vals, refs, more, stored).to_wire()


def _values_page(
    node: "DhtNode", key: bytes, offset: int, value_type: int | None
) -> tuple[list[Value], list[Ref], int | None]:
    """A page of the key's values from `offset`: those inline, those by reference, the next offset."""
    values = node.store.values_from(key, offset, PAGE_ENTRIES + 1, value_type)
    page, more = values[:PAGE_ENTRIES], (offset + PAGE_ENTRIES if len(values) > PAGE_ENTRIES else None)
    inline: list[Value] = []
    refs: list[Ref] = []
    budget = INLINE_BUDGET
    for value in page:
        if value.size <= min(INLINE_VALUE_MAX, budget):
            inline.append(value)
            budget -= value.size
        else:
            refs.append((value.owner, value.id, value.seq))
    return inline, refs, more


# ---- dm_fetch ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchRequest:
    key: bytes
    owner: bytes
    value_id: int

    def to_wire(self) -> dict:
        return {"k": self.key, "o": self.owner, "i": self.value_id}

    @classmethod
    def from_wire(cls, body: dict) -> "FetchRequest":
        key = require_key(body.get("k"))
        owner = body.get("o")
        if not isinstance(owner, bytes):
            raise RpcRefused("owner must be bytes")
        return cls(key, owner, require_int(body.get("i"), "value id", 1, MAX_VALUE_ID))


async def call_fetch(endpoint: Endpoint, address: Address, request: FetchRequest) -> Value | None:
    """The value the peer holds under that identity; None if it holds none, sent garbage or failed."""
    try:
        reply = await endpoint.call(address, FETCH, request.to_wire())
    except RpcFailure:
        return None
    return _value_or_none(reply.payload)


def serve_fetch(node: "DhtNode", request: Request) -> Any:
    if not request.proven:
        raise RpcRefused(UNPROVEN)  # a value can be big: checked before the store is read
    fetch = FetchRequest.from_wire(request.body)
    value = node.store.get_one(fetch.key, fetch.owner, fetch.value_id)
    return value.to_wire() if value else None
