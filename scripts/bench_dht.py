#!/usr/bin/env python3
"""DHT vs stock kademlia 2.2.3: the same workload on dhtmesh `DhtNode`s and on stock `kademlia.Server`s.

Layout (identical for both systems but the addresses, loopback only, ephemeral ports; stock nodes all on
127.0.0.1, each dhtmesh node on a loopback address of its own, `loopback_host`, as its per-host limits
would otherwise see one machine):
  * N nodes in this one asyncio process (N from `--sizes`, default 20,50,200), each bootstrapped to node 0
    (star). Then a settle pass: dhtmesh nodes each look up their own id concurrently (as
    tests/conftest.py does); stock nodes bootstrap a second time, one after the other, to node 0 (node 0
    to node 1). dhtmesh runs with its production defaults (`NodeConfig()`: k=20, α=3, 1 s per attempt
    plus one retry); stock with its own (k=20, α=3, 5 s rpcudp timeout, no retry, default SO_RCVBUF).
  * Phases, one op at a time unless noted, each from a requester drawn with the same seeded choices for
    both systems:
      put          `--ops` puts of distinct keys (100-byte values) from random nodes;
      get          `--ops` gets of those keys from random nodes (the requester may hold the key);
      get-nonholder `--ops` gets from a node that does not hold the key (dhtmesh: `store.get(key)` empty;
                   stock: the key is not in its storage); if every node holds it, a random node is used and
                   counted in `requester_held`;
      burst        25 puts of new keys + 25 gets of existing keys (fewer if --ops < 25), all at once
                   (`asyncio.gather`).
  * Per phase and system: latency p50/p95/p99 (ms, `perf_counter` around the awaited call; nearest-rank
    percentiles, `bench_common.percentile`), success, RPCs per op, replicas per put, timeouts.
      success      put: at least one replica acked (dhtmesh `PutResult.replicas >= 1`; stock: at least one
                   STORE answered, counted in `call_store`, not `set()`'s return value); get: the value put
                   is among the results.
      RPCs per op  counted per operation through a contextvar that every task of the op inherits.
                   dhtmesh: the requester's requests sent and retried, as its observation hooks report
                   them (`bench_common.observe`; outside the burst the plain delta of the requester's
                   counters "rpc_out" + "rpc_retries" is reported too, `ctr_delta`, as a cross-check).
                   stock: every `call_*` (find_node, find_value, store, ping) of the op, as the reference
                   kad_bench.py does.
      replicas     nodes whose store holds the key 0.5 s after the phase (all nodes scanned).
      timeouts     whole mesh during the phase: dhtmesh Σ "rpc_timeouts" over all nodes (an RPC that got
                   no answer after its retry); stock: `call_*` results with ok False.
    Evidence for the differences, in each row's "detail": RPCs per op by name; lookup depth, dhtmesh `hops`
    (longest chain of "contact learnt from a reply, then asked"; its lookup has no rounds, α queries stay in
    flight) and stock `rounds` (`SpiderCrawl._find` calls); process CPU per op and per RPC (all nodes share
    this process, so latency here is CPU time, not network time); background hand-offs (a node admits a
    contact it did not know and scans every key it holds for what to hand over: dhtmesh's counters
    "handoffs" and "handoff_keys_scanned", stock `welcome_if_new`) and how many keys they scanned.
  * `--multiproc`: per system, 3 OS processes × 10 nodes (this script re-invoked with hidden worker flags,
    coordinated by files in a temporary directory). Process 0 starts first; the nodes of processes 1 and
    2 bootstrap to its node 0; a barrier; settle; process 1 puts 50 values; processes 0 and 2 get all 50.

Output: a table, then as the very last stdout line one JSON document {"bench": "dht", "rows", "ratios",
"targets", "setup", "host"}; `--json PATH` writes the same document to PATH. Other work on the host skews
the figures: "host" records the CPU count and load average before and after.
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench_common import OP, Trace, count, observe, percentile, rounded
from kademlia import crawling
from kademlia.network import Server
from kademlia.protocol import KademliaProtocol
from kademlia.utils import digest

from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.values.value import Value, new_value_id
from dhtmesh.node.wire.netgroup import loopback_host
from dhtmesh.testing import eventually, start_node

HOST = "127.0.0.1"
VALUE_SIZE = 100
BURST_PUTS = 25
BURST_GETS = 25
OP_TIMEOUT = 30.0  # a stuck op fails instead of hanging the run
JOIN_TIMEOUT = 60.0
SETTLE_PAUSE = 1.0
REPLICA_PAUSE = 0.5
MP_PROCS = 3
MP_NODES = 10
MP_VALUES = 50
MP_WAIT = 300.0
SYSTEMS = ("dhtmesh", "kademlia")
BACKGROUND = ("handoffs", "handoff_keys_scanned")  # dhtmesh's counters of its hand-offs' scans
Address = tuple[str, int]


STOCK_FAILED_CALLS = Counter[str]()  # every stock call_* that got no answer, over all nodes
STOCK_BACKGROUND = Counter[str]()  # stock's welcome_if_new for a new node: it scans every stored key


def key_of(name: str) -> bytes:
    return hashlib.sha1(name.encode()).digest()  # what kademlia's digest(name) gives, too


def data_of(name: str) -> bytes:
    return (hashlib.sha256(name.encode()).digest() * 4)[:VALUE_SIZE]


# ---- stock kademlia, instrumented -------------------------------------------------------------------


class CountingProtocol(KademliaProtocol):
    """Counts every outgoing call of the current op, and every call anywhere that got no answer."""

    async def _counted(self, name: str, call: Awaitable[Any]) -> Any:
        count("rpcs")
        count(f"rpc.{name}")
        result = await call
        if not result[0]:
            STOCK_FAILED_CALLS["all"] += 1
            count("timeouts")
        elif name == "store":
            count("store_ok")
        return result

    def welcome_if_new(self, node: Any) -> None:
        if self.router.is_new_node(node):
            STOCK_BACKGROUND["handoffs"] += 1
            STOCK_BACKGROUND["handoff_keys_scanned"] += len(self.storage.data)
        super().welcome_if_new(node)

    async def call_find_node(self, node_to_ask: Any, node_to_find: Any) -> Any:
        return await self._counted("find_node", super().call_find_node(node_to_ask, node_to_find))

    async def call_find_value(self, node_to_ask: Any, node_to_find: Any) -> Any:
        return await self._counted("find_value", super().call_find_value(node_to_ask, node_to_find))

    async def call_ping(self, node_to_ask: Any) -> Any:
        return await self._counted("ping", super().call_ping(node_to_ask))

    async def call_store(self, node_to_ask: Any, key: bytes, value: Any) -> Any:
        return await self._counted("store", super().call_store(node_to_ask, key, value))


class CountingServer(Server):
    protocol_class = CountingProtocol


def count_crawl_rounds() -> None:
    """Count `SpiderCrawl._find` calls (one round of α queries) for the current op."""
    original = crawling.SpiderCrawl._find
    if getattr(original, "_bench_counting", False):
        return

    async def find(self: crawling.SpiderCrawl, rpcmethod: Any) -> Any:
        count("rounds")
        return await original(self, rpcmethod)

    find._bench_counting = True  # type: ignore[attr-defined]
    crawling.SpiderCrawl._find = find  # type: ignore[method-assign]


# ---- the two meshes behind one interface ----------------------------------------------------------


class Mesh(Protocol):
    system: str

    async def start(self, total: int) -> None: ...
    def address(self, index: int) -> Address: ...
    def size(self) -> int: ...
    async def join(self, index: int, seed: Address) -> None: ...
    async def settle(self, seed: Address) -> None: ...
    async def put(self, index: int, name: str) -> bool: ...
    async def get(self, index: int, name: str) -> bool: ...
    def holds(self, index: int, name: str) -> bool: ...
    def timeouts(self) -> int: ...
    def op_rpcs(self, trace: Trace) -> int: ...
    def node_rpcs(self, index: int) -> int | None: ...
    def table_sizes(self) -> list[int]: ...
    def background(self) -> Counter[str]: ...
    async def stop(self) -> None: ...


class DhtmeshMesh:
    system = "dhtmesh"

    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig()
        self.nodes: list[DhtNode] = []

    async def start(self, total: int) -> None:
        for index in range(total):
            # Each node on a loopback address of its own: nodes limit how many contacts share a host.
            node = await start_node(self.config, host=loopback_host(index + 1))
            observe(node)
            self.nodes.append(node)

    def address(self, index: int) -> Address:
        return self.nodes[index].address

    def size(self) -> int:
        return len(self.nodes)

    async def join(self, index: int, seed: Address) -> None:
        await asyncio.wait_for(self.nodes[index].join([seed]), JOIN_TIMEOUT)

    async def settle(self, seed: Address) -> None:
        await asyncio.wait_for(asyncio.gather(*(n.lookup(n.node_id) for n in self.nodes)), JOIN_TIMEOUT)

    async def put(self, index: int, name: str) -> bool:
        result = await self.nodes[index].put(key_of(name), Value(new_value_id(), data_of(name)))
        return result.replicas >= 1

    async def get(self, index: int, name: str) -> bool:
        values = await self.nodes[index].get(key_of(name))
        return any(value.data == data_of(name) for value in values)

    def holds(self, index: int, name: str) -> bool:
        return bool(self.nodes[index].held(key_of(name)))

    def timeouts(self) -> int:
        return sum(node.counters.get("rpc_timeouts") for node in self.nodes)

    def op_rpcs(self, trace: Trace) -> int:
        return trace.counts["rpc_out"] + trace.counts["rpc_retries"]

    def node_rpcs(self, index: int) -> int | None:
        counters = self.nodes[index].counters
        return counters.get("rpc_out") + counters.get("rpc_retries")

    def table_sizes(self) -> list[int]:
        return [node.contact_count() for node in self.nodes]

    def background(self) -> Counter[str]:
        return Counter({name: sum(node.counters.get(name) for node in self.nodes) for name in BACKGROUND})

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()
        self.nodes.clear()


class StockMesh:
    system = "kademlia"

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.ports: list[int] = []

    async def start(self, total: int) -> None:
        count_crawl_rounds()
        for _ in range(total):
            server = CountingServer()
            await server.listen(0, interface=HOST)
            self.servers.append(server)
            self.ports.append(server.transport.get_extra_info("sockname")[1])

    def address(self, index: int) -> Address:
        return (HOST, self.ports[index])

    def size(self) -> int:
        return len(self.servers)

    async def join(self, index: int, seed: Address) -> None:
        await asyncio.wait_for(self.servers[index].bootstrap([seed]), JOIN_TIMEOUT)

    async def settle(self, seed: Address) -> None:
        """A second bootstrap pass, one node after the other; the seed itself bootstraps to a neighbour."""
        for index in range(len(self.servers)):
            target = seed if self.address(index) != seed else self.address((index + 1) % len(self.servers))
            if target != self.address(index):
                await self.join(index, target)

    async def put(self, index: int, name: str) -> bool:
        await self.servers[index].set(name, data_of(name))
        trace = OP.get()
        return trace is not None and trace.counts["store_ok"] >= 1

    async def get(self, index: int, name: str) -> bool:
        return await self.servers[index].get(name) == data_of(name)

    def holds(self, index: int, name: str) -> bool:
        return self.servers[index].storage.get(digest(name)) is not None

    def timeouts(self) -> int:
        return STOCK_FAILED_CALLS["all"]

    def op_rpcs(self, trace: Trace) -> int:
        return trace.counts["rpcs"]

    def node_rpcs(self, index: int) -> int | None:
        return None

    def table_sizes(self) -> list[int]:
        return [sum(len(bucket) for bucket in s.protocol.router.buckets) for s in self.servers]

    def background(self) -> Counter[str]:
        return STOCK_BACKGROUND

    async def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()
        await asyncio.sleep(0.1)


def make_mesh(system: str) -> Mesh:
    return DhtmeshMesh() if system == "dhtmesh" else StockMesh()


# ---- measuring ---------------------------------------------------------------------------------


@dataclass
class OpResult:
    ms: float
    ok: bool
    rpcs: int
    trace: Trace
    local: bool = False
    ctr_delta: int | None = None
    err: str = ""


async def measure(mesh: Mesh, kind: str, index: int, name: str) -> OpResult:
    """Run one put or get from node `index` under its own trace; never raises."""
    local = kind == "get" and mesh.holds(index, name)
    trace = Trace()
    token = OP.set(trace)
    before = mesh.node_rpcs(index)
    started = time.perf_counter()
    err = ""
    try:
        op = mesh.put if kind == "put" else mesh.get
        ok = await asyncio.wait_for(op(index, name), OP_TIMEOUT)
    except Exception as error:
        ok, err = False, repr(error)[:120]
    finally:
        OP.reset(token)
    ms = (time.perf_counter() - started) * 1000
    after = mesh.node_rpcs(index)
    delta = after - before if after is not None and before is not None else None
    return OpResult(ms, ok, mesh.op_rpcs(trace), trace, local, delta, err)


def mean_of(values: list[int] | list[float]) -> float | None:
    return round(statistics.mean(values), 2) if values else None


def detail(results: list[OpResult]) -> dict[str, Any]:
    names = sorted({n for r in results for n in r.trace.counts if n.startswith("rpc.")})
    info: dict[str, Any] = {
        "mean_ms": rounded(statistics.mean(r.ms for r in results)) if results else None,
        "rpc_names_per_op": {n[4:]: mean_of([r.trace.counts[n] for r in results]) for n in names},
        "rpcs_max": max((r.rpcs for r in results), default=None),
        "op_timeouts": sum(r.trace.counts["rpc_timeouts"] + r.trace.counts["timeouts"] for r in results),
    }
    hops = [r.trace.counts["hops"] for r in results if r.trace.counts["hops"]]
    rounds = [r.trace.counts["rounds"] for r in results if r.trace.counts["rounds"]]
    if hops:
        info["hops_mean"], info["hops_max"] = mean_of(hops), max(hops)
    if rounds:
        info["rounds_mean"], info["rounds_max"] = mean_of(rounds), max(rounds)
    retries = sum(r.trace.counts["rpc_retries"] for r in results)
    if retries:
        info["retries_per_op"] = round(retries / len(results), 2)  # dhtmesh re-sends after 1 s without a reply
    deltas = [r.ctr_delta for r in results if r.ctr_delta is not None]
    if deltas:
        info["ctr_delta_per_op"] = mean_of(deltas)
    info["local_hits"] = sum(r.local for r in results)
    errors = sorted({r.err for r in results if r.err})
    if errors:
        info["errors"] = errors[:3]
    return info


def make_row(
    case: str, system: str, results: list[OpResult], timeouts: int | None, replicas: list[int] | None = None
) -> dict[str, Any]:
    latencies = [r.ms for r in results]
    return {
        "case": case,
        "system": system,
        "ops": len(results),
        "p50_ms": rounded(percentile(latencies, 50), 3),
        "p95_ms": rounded(percentile(latencies, 95), 3),
        "p99_ms": rounded(percentile(latencies, 99), 3),
        "success": round(sum(r.ok for r in results) / len(results), 4) if results else None,
        "rpcs_per_op": mean_of([r.rpcs for r in results]),
        "replicas_median": statistics.median(replicas) if replicas else None,
        "timeouts": timeouts,
        "detail": detail(results),
    }


@dataclass
class PhaseMeter:
    """Mesh-wide costs of one phase: timeouts, process CPU (every node runs in this process, requesters and
    responders alike) and background work (hand-offs to newly admitted contacts and the keys they scan)."""

    mesh: Mesh
    timeouts: int = 0
    cpu_s: float = 0.0
    background: Counter[str] = field(default_factory=Counter)
    aside_s: float = 0.0  # the bench's own work (scanning every store for a non-holder), not counted

    def __post_init__(self) -> None:
        self.timeouts, self.cpu_s = self.mesh.timeouts(), time.process_time()
        self.background = Counter(self.mesh.background())

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        started = time.process_time()
        try:
            yield
        finally:
            self.aside_s += time.process_time() - started

    def stop(self) -> None:
        self.timeouts = self.mesh.timeouts() - self.timeouts
        self.cpu_s = time.process_time() - self.cpu_s - self.aside_s
        self.background = Counter(self.mesh.background()) - self.background

    def annotate(self, row: dict[str, Any], results: list[OpResult]) -> dict[str, Any]:
        rpcs = sum(r.rpcs for r in results)
        row["detail"]["cpu_ms_per_op"] = round(self.cpu_s * 1000 / len(results), 3) if results else None
        row["detail"]["cpu_us_per_rpc"] = round(self.cpu_s * 1e6 / rpcs, 1) if rpcs else None
        row["detail"]["background"] = dict(self.background)
        return row


def holders(mesh: Mesh, name: str) -> int:
    return sum(mesh.holds(index, name) for index in range(mesh.size()))


async def replicas_of(mesh: Mesh, names: list[str]) -> list[int]:
    await asyncio.sleep(REPLICA_PAUSE)
    return [holders(mesh, name) for name in names]


# ---- the single-process phases ---------------------------------------------------------------------


async def phase_put(mesh: Mesh, n: int, names: list[str], rng: random.Random) -> dict[str, Any]:
    meter = PhaseMeter(mesh)
    results = [await measure(mesh, "put", rng.randrange(n), name) for name in names]
    meter.stop()
    replicas = await replicas_of(mesh, names)
    return meter.annotate(make_row(f"N={n} put", mesh.system, results, meter.timeouts, replicas), results)


async def phase_get(mesh: Mesh, n: int, keys: list[str], rng: random.Random, nonholder: bool) -> dict[str, Any]:
    meter = PhaseMeter(mesh)
    results, held = [], 0
    for name in keys:
        with meter.aside():
            lacking = [i for i in range(n) if not mesh.holds(i, name)] if nonholder else []
        held += nonholder and not lacking
        results.append(await measure(mesh, "get", rng.choice(lacking) if lacking else rng.randrange(n), name))
    meter.stop()
    row = make_row(f"N={n} get{' non-holder' if nonholder else ''}", mesh.system, results, meter.timeouts)
    if nonholder:
        row["detail"]["requester_held"] = held
    return meter.annotate(row, results)


async def phase_burst(mesh: Mesh, n: int, names: list[str], rng: random.Random) -> list[dict[str, Any]]:
    new = [f"burst-{n}-{i}" for i in range(BURST_PUTS)]
    jobs = [("put", rng.randrange(n), name) for name in new]
    jobs += [("get", rng.randrange(n), name) for name in rng.sample(names, min(BURST_GETS, len(names)))]
    rng.shuffle(jobs)
    meter = PhaseMeter(mesh)
    results = list(await asyncio.gather(*(measure(mesh, kind, index, name) for kind, index, name in jobs)))
    meter.stop()
    for result in results:
        result.ctr_delta = None  # the requester's counters also count the other ops of the burst
    replicas = await replicas_of(mesh, new)
    puts = [r for r, job in zip(results, jobs, strict=True) if job[0] == "put"]
    gets = [r for r, job in zip(results, jobs, strict=True) if job[0] == "get"]
    return [
        meter.annotate(make_row(f"N={n} burst", mesh.system, results, meter.timeouts, replicas), results),
        make_row(f"N={n} burst put", mesh.system, puts, None, replicas),
        make_row(f"N={n} burst get", mesh.system, gets, None),
    ]


async def run_phases(mesh: Mesh, n: int, ops: int, seed: int) -> list[dict[str, Any]]:
    def rng(phase: str) -> random.Random:
        return random.Random(f"{seed}-{n}-{phase}")  # the same choices for both systems

    names = [f"bench-{n}-{i}" for i in range(ops)]
    rows = [await phase_put(mesh, n, names, rng("put"))]
    keys = [rng("keys").choice(names) for _ in range(ops)]
    rows.append(await phase_get(mesh, n, keys, rng("get"), nonholder=False))
    rows.append(await phase_get(mesh, n, keys, rng("nonholder"), nonholder=True))
    rows += await phase_burst(mesh, n, names, rng("burst"))
    return rows


async def build_mesh(mesh: Mesh, n: int) -> dict[str, Any]:
    """Start n nodes, bootstrap each to node 0, settle; returns what setting up took."""
    started = time.perf_counter()
    await mesh.start(n)
    seed = mesh.address(0)
    for index in range(1, n):
        await mesh.join(index, seed)
    await mesh.settle(seed)
    await asyncio.sleep(SETTLE_PAUSE)
    tables = mesh.table_sizes()
    return {
        "system": mesh.system,
        "n": n,
        "boot_s": round(time.perf_counter() - started - SETTLE_PAUSE, 2),
        "table_min_median_max": [min(tables), statistics.median(tables), max(tables)],
        "timeouts_during_setup": mesh.timeouts(),
    }


async def bench_size(system: str, n: int, ops: int, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    mesh = make_mesh(system)
    STOCK_FAILED_CALLS.clear()
    STOCK_BACKGROUND.clear()
    try:
        setup = await build_mesh(mesh, n)
        log(f"N={n} {system}: up in {setup['boot_s']} s, routing tables {setup['table_min_median_max']}")
        rows = await run_phases(mesh, n, ops, seed)
    finally:
        await mesh.stop()
    return setup, rows


async def bench_all(sizes: list[int], ops: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    setups, rows = [], []
    for n in sizes:
        for system in SYSTEMS:
            setup, system_rows = await bench_size(system, n, ops, seed)
            setups.append(setup)
            rows += system_rows
    return setups, rows


# ---- several OS processes --------------------------------------------------------------------------


async def wait_files(directory: Path, names: list[str]) -> None:
    await eventually(lambda: all((directory / name).exists() for name in names), within=MP_WAIT)


def write_json(path: Path, document: Any) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, path)


async def barrier(workdir: Path, step: str, role: int) -> None:
    (workdir / f"{step}.{role}").touch()
    await wait_files(workdir, [f"{step}.{r}" for r in range(MP_PROCS)])


async def worker_join(mesh: Mesh, role: int, workdir: Path) -> Address:
    """Role 0 stars its nodes to its node 0 and publishes that address; the others join it."""
    if role == 0:
        seed = mesh.address(0)
        for index in range(1, mesh.size()):
            await mesh.join(index, seed)
        write_json(workdir / "seed.json", list(seed))
        return seed
    await wait_files(workdir, ["seed.json"])
    host, port = json.loads((workdir / "seed.json").read_text())
    seed = (host, port)
    for index in range(mesh.size()):
        await mesh.join(index, seed)
    return seed


async def worker_ops(mesh: Mesh, role: int, workdir: Path, names: list[str], rng: random.Random) -> dict[str, Any]:
    puts: list[OpResult] = []
    before = mesh.timeouts()
    if role == 1:
        puts = [await measure(mesh, "put", rng.randrange(mesh.size()), name) for name in names]
        (workdir / "put_done").touch()
    await wait_files(workdir, ["put_done"])
    await asyncio.sleep(REPLICA_PAUSE)
    held = {name: holders(mesh, name) for name in names}
    await barrier(workdir, "counted", role)
    middle = mesh.timeouts()
    gets = [] if role == 1 else [await measure(mesh, "get", rng.randrange(mesh.size()), name) for name in names]
    await barrier(workdir, "got", role)
    timeouts = [middle - before, mesh.timeouts() - middle]
    return {"puts": [_plain(r) for r in puts], "gets": [_plain(r) for r in gets], "holders": held, "timeouts": timeouts}


def _plain(result: OpResult) -> dict[str, Any]:
    plain = {"ms": result.ms, "ok": result.ok, "rpcs": result.rpcs, "local": result.local, "err": result.err}
    return plain | {"counts": dict(result.trace.counts)}


async def worker(role: int, system: str, workdir: Path, nodes: int, values: int, seed: int) -> None:
    mesh = make_mesh(system)
    try:
        await mesh.start(nodes)
        seed_address = await worker_join(mesh, role, workdir)
        await barrier(workdir, "up", role)
        await mesh.settle(seed_address)
        await barrier(workdir, "settled", role)
        names = [f"mp-{i}" for i in range(values)]
        result = await worker_ops(mesh, role, workdir, names, random.Random(f"{seed}-mp-{role}"))
        result |= {"role": role, "pid": os.getpid()}
        write_json(workdir / f"result.{role}.json", result)
        await barrier(workdir, "done", role)
    finally:
        await mesh.stop()


def spawn_worker(role: int, system: str, workdir: Path, seed: int) -> subprocess.Popen:
    command = [sys.executable, os.path.abspath(__file__), "--worker-role", str(role), "--worker-system", system]
    command += ["--workdir", str(workdir), "--seed", str(seed)]
    with open(workdir / f"out.{role}", "w") as out, open(workdir / f"err.{role}", "w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)


def wait_path(path: Path, processes: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError(f"{path.name} did not appear")
        time.sleep(0.05)


def stop_processes(processes: list[subprocess.Popen]) -> list[int | None]:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    return [process.returncode for process in processes]


def run_workers(system: str, workdir: Path, seed: int) -> tuple[list[int | None], float]:
    processes: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        processes.append(spawn_worker(0, system, workdir, seed))
        wait_path(workdir / "seed.json", processes, 60)
        processes += [spawn_worker(role, system, workdir, seed) for role in range(1, MP_PROCS)]
        for process in processes:
            process.wait(timeout=max(1.0, MP_WAIT - (time.monotonic() - started)))
    except (subprocess.TimeoutExpired, RuntimeError) as error:
        log(f"multiproc {system}: {error}")
    finally:
        codes = stop_processes(processes)
    return codes, time.monotonic() - started


def multiproc_rows(system: str, seed: int) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-dht-"))
    codes, wall = run_workers(system, workdir, seed)
    results = [json.loads(p.read_text()) for p in sorted(workdir.glob("result.*.json"))]
    log(f"multiproc {system}: return codes {codes}, {wall:.1f} s, {len(results)} results, files in {workdir}")
    for role, code in enumerate(codes):
        if code:
            log(f"  worker {role} stderr: {(workdir / f'err.{role}').read_text()[-800:]}")
    case = f"{MP_PROCS}x{MP_NODES} procs"
    puts = [_op(r) for result in results for r in result["puts"]]
    gets = [_op(r) for result in results for r in result["gets"]]
    names = {name for result in results for name in result["holders"]}
    replicas = [sum(result["holders"].get(name, 0) for result in results) for name in sorted(names)]
    complete = len(results) == MP_PROCS
    put_timeouts, get_timeouts = (sum(r["timeouts"][phase] for r in results) if complete else None for phase in (0, 1))
    rows = [
        make_row(f"{case} put", system, puts, put_timeouts, replicas),
        make_row(f"{case} get", system, gets, get_timeouts),
    ]
    for row in rows:
        row["detail"]["return_codes"] = codes
    return rows


def _op(raw: dict[str, Any]) -> OpResult:
    return OpResult(raw["ms"], raw["ok"], raw["rpcs"], Trace(Counter(raw["counts"])), raw["local"], None, raw["err"])


# ---- report -----------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def find_row(rows: list[dict[str, Any]], case: str, system: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["case"] == case and r["system"] == system), None)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        anchor = find_row(rows, row["case"], "kademlia") if row["system"] == "dhtmesh" else None
        for metric in ("p50_ms", "p95_ms", "p99_ms", "rpcs_per_op") if anchor else ():
            mine, theirs = row[metric], anchor[metric]  # type: ignore[index]
            if mine is None or theirs is None:
                continue
            ratio = round(mine / theirs, 3) if theirs else None
            out.append({"case": row["case"], "metric": metric, "dhtmesh": mine, "anchor": theirs, "ratio": ratio})
    return out


def targets(rows: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in sizes:
        burst = find_row(rows, f"N={n} burst", "dhtmesh")
        if burst:
            met = burst["success"] == 1.0 and burst["timeouts"] == 0
            out.append(
                {
                    "target": "burst: 100% success, 0 timeouts",
                    "case": burst["case"],
                    "met": met,
                    "dhtmesh": {"success": burst["success"], "timeouts": burst["timeouts"]},
                }
            )
    mine, theirs = find_row(rows, "N=50 put", "dhtmesh"), find_row(rows, "N=50 put", "kademlia")
    if mine and theirs:
        out.append(
            {
                "target": "put p50 <= 0.5 x stock at N=50",
                "case": "N=50 put",
                "dhtmesh": mine["p50_ms"],
                "anchor": theirs["p50_ms"],
                "met": mine["p50_ms"] <= 0.5 * theirs["p50_ms"],
            }
        )
    for row in rows:
        anchor = find_row(rows, row["case"], "kademlia")
        if row["system"] == "dhtmesh" and " get" in row["case"] and "procs" not in row["case"] and anchor:
            out.append(
                {
                    "target": "RPCs per get <= stock",
                    "case": row["case"],
                    "dhtmesh": row["rpcs_per_op"],
                    "anchor": anchor["rpcs_per_op"],
                    "met": row["rpcs_per_op"] <= anchor["rpcs_per_op"],
                }
            )
    return out


def depth_text(row: dict[str, Any]) -> str:
    info = row["detail"]
    if "hops_mean" in info:
        return f"hops {info['hops_mean']}/{info['hops_max']}"
    if "rounds_mean" in info:
        return f"rounds {info['rounds_mean']}/{info['rounds_max']}"
    return ""


def rpc_text(row: dict[str, Any]) -> str:
    names = row["detail"]["rpc_names_per_op"]
    text = " ".join(f"{name}={value}" for name, value in names.items() if value)
    if row["detail"].get("retries_per_op"):
        text += f" (+{row['detail']['retries_per_op']} re-sent)"
    background = row["detail"].get("background")
    if background:
        text += (
            f" | hand-offs {background.get('handoffs', 0)} scanning {background.get('handoff_keys_scanned', 0)} keys"
        )
    return text


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'case':<24}{'system':<10}{'ops':>5}{'p50ms':>10}{'p95ms':>10}{'p99ms':>10}{'ok':>8}"
    header += f"{'rpc/op':>8}{'repl':>6}{'tmo':>5}{'local':>6}{'cpu/rpc':>9}  depth / RPCs per op by name"
    print(header)
    print("-" * len(header))
    cases = list(dict.fromkeys(row["case"] for row in rows))
    for case in cases:
        for row in (r for r in rows if r["case"] == case):
            line = f"{case:<24}{row['system']:<10}{row['ops']:>5}{fmt(row['p50_ms']):>10}{fmt(row['p95_ms']):>10}"
            line += f"{fmt(row['p99_ms']):>10}{fmt(row['success']):>8}{fmt(row['rpcs_per_op']):>8}"
            line += f"{fmt(row['replicas_median']):>6}{fmt(row['timeouts']):>5}{row['detail']['local_hits']:>6}"
            line += f"{fmt(row['detail'].get('cpu_us_per_rpc')):>9}"
            print(f"{line}  {depth_text(row)} {rpc_text(row)}".rstrip())
    print()


def print_report(document: dict[str, Any]) -> None:
    host = document["host"]
    print(f"DHT vs stock kademlia 2.2.3 (loopback, one asyncio process per mesh unless 'procs'; {host['cpus']} CPUs,")
    print(f"load average {host['loadavg_start'][0]:.2f} at start, {host['loadavg_end'][0]:.2f} at end)")
    print_table(document["rows"])
    for setup in document["setup"]:
        print(
            f"setup N={setup['n']} {setup['system']}: {setup['boot_s']} s, routing table min/median/max "
            f"{setup['table_min_median_max']}, timeouts while joining {setup['timeouts_during_setup']}"
        )
    print()
    for target in document["targets"]:
        verdict = "MET " if target["met"] else "MISS"
        print(
            f"[{verdict}] {target['target']:<34} {target['case']:<22} dhtmesh={target['dhtmesh']} "
            f"stock={target.get('anchor', '-')}"
        )


# ---- entry point -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dhtmesh vs stock kademlia 2.2.3 on loopback")
    parser.add_argument("--sizes", default="20,50,200", help="mesh sizes, comma-separated")
    parser.add_argument("--ops", type=int, default=200, help="puts, gets and non-holder gets per size")
    parser.add_argument("--quick", action="store_true", help="sizes 20,50 and 50 ops")
    parser.add_argument("--multiproc", action="store_true", help=f"also {MP_PROCS} processes x {MP_NODES} nodes")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker-role", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.ops = "20,50", 50
    return args


def main() -> None:
    args = parse_args()
    for name in ("kademlia", "rpcudp"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.worker_role is not None:
        asyncio.run(worker(args.worker_role, args.worker_system, args.workdir, MP_NODES, MP_VALUES, args.seed))
        return
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    host: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    setups, rows = asyncio.run(bench_all(sizes, args.ops, args.seed))
    if args.multiproc:
        for system in SYSTEMS:
            rows += multiproc_rows(system, args.seed)
    document = {"bench": "dht", "rows": rows, "ratios": ratios(rows), "targets": targets(rows, sizes)}
    document |= {"setup": setups, "host": host | {"loadavg_end": os.getloadavg()}}
    print_report(document)
    if args.json:
        args.json.write_text(json.dumps(document, indent=1))
    print(json.dumps(document), flush=True)


if __name__ == "__main__":
    main()
