"""What every benchmark shares: the one percentile definition of their tables, and the per-operation
trace that attributes a node's RPCs and lookup depth to the operation running, through the node's
observation hooks (`DhtNode.add_trace`, `dhtmesh.node.trace`), not by wrapping its methods."""

import contextvars
import math
from collections import Counter
from dataclasses import dataclass, field

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.trace import LookupDone, NodeTrace, RpcDone, RpcSent


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q`th percentile (0 < q <= 100) of `values`: the smallest value that at least q %
    of them do not exceed, so "p99" is always a latency some operation had. None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) / 100))
    return ordered[min(rank, len(ordered)) - 1]


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Trace:
    """What one operation did: named counts ("rpc_out", "rpc_retries", "rpc_timeouts", "rpc.<name>",
    "hops", and whatever else a benchmark counts)."""

    counts: Counter[str] = field(default_factory=Counter)


OP: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("bench_op", default=None)
"""The trace of the operation running; every task the operation starts inherits it."""


def count(name: str, amount: int = 1) -> None:
    """Add to the running operation's count `name` (nothing outside an operation)."""
    trace = OP.get()
    if trace is not None:
        trace.counts[name] += amount


def _sent(event: RpcSent) -> None:
    count("rpc_out" if event.attempt == 0 else "rpc_retries")
    if event.attempt == 0:
        count(f"rpc.{event.name}")


def _done(event: RpcDone) -> None:
    if not event.replied:
        count("rpc_timeouts")


def _lookup_done(event: LookupDone) -> None:
    trace = OP.get()
    if trace is not None:
        trace.counts["hops"] = max(trace.counts["hops"], event.hops)


OP_TRACE = NodeTrace(on_rpc_sent=[_sent], on_rpc_done=[_done], on_lookup_done=[_lookup_done])


def observe(node: DhtNode) -> None:
    """Attribute `node`'s RPCs (sent, retried, timed out, by name) and its lookups' hops to the running op."""
    node.add_trace(OP_TRACE)
