"""Observation hooks on a node, in the spirit of aiohttp's `TraceConfig`: a `NodeTrace` holds lists of
callbacks, registered on a node with `DhtNode.add_trace`, that are told of every RPC exchange and every
lookup. Benchmarks (and, later, metrics) watch a node through them instead of wrapping its methods.

Callbacks are plain functions called inline, in the task doing the work (so a `contextvars` value set
by whoever started an operation is visible to them); they must be quick and must not raise. A node with
no trace registered builds no event and calls nothing.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from dhtmesh.node.wire.ratelimit import Address


@dataclass(frozen=True, slots=True)
class RpcSent:
    """One request datagram sent: `attempt` 0 is the first, 1 the retry after a silent first attempt."""

    address: Address
    name: str
    attempt: int


@dataclass(frozen=True, slots=True)
class RpcDone:
    """One request/reply exchange ended: `replied`, or not after its retry (a timeout). An exchange
    cancelled midway (its lookup ended) is not reported."""

    address: Address
    name: str
    replied: bool
    seconds: float


@dataclass(frozen=True, slots=True)
class LookupDone:
    """One lookup ended. `purpose`: "nodes" (a plain lookup), "values" (a get) or "put" (a put whose value
    rides on the lookup's find requests). `hops`: the longest chain of contacts learnt from a reply and
    then asked (1: a contact from the node's own table)."""

    target: bytes
    purpose: str
    hops: int
    asked: int
    answered: int
    seconds: float


@dataclass(eq=False)
class NodeTrace:
    """Append callbacks to the lists wanted, then `node.add_trace(trace)`."""

    on_rpc_sent: list[Callable[[RpcSent], None]] = field(default_factory=list)
    on_rpc_done: list[Callable[[RpcDone], None]] = field(default_factory=list)
    on_lookup_done: list[Callable[[LookupDone], None]] = field(default_factory=list)


class Tracer:
    """The traces registered on one node, shared by the parts that report to them (its endpoint, its
    lookups). False while none is registered, so that a reporter can skip building an event."""

    def __init__(self) -> None:
        self._traces: list[NodeTrace] = []

    def add(self, trace: NodeTrace) -> None:
        self._traces.append(trace)

    def __bool__(self) -> bool:
        return bool(self._traces)

    def rpc_sent(self, event: RpcSent) -> None:
        for trace in self._traces:
            for callback in trace.on_rpc_sent:
                callback(event)

    def rpc_done(self, event: RpcDone) -> None:
        for trace in self._traces:
            for callback in trace.on_rpc_done:
                callback(event)

    def lookup_done(self, event: LookupDone) -> None:
        for trace in self._traces:
            for callback in trace.on_lookup_done:
                callback(event)
