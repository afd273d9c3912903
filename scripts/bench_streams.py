#!/usr/bin/env python3
"""Data streams on the mesh vs Redis streams: the same 1 KiB entries through dhtmesh's streams API
(pushed through one node, pulled through another) and through a Redis server's streams (what
ptg-api-server stores in), side by side in one run (issue 17).

What runs (everything on loopback; every process stopped by its PID at the end, even on failure):

* Redis: Debian's `redis-server --port N --bind 127.0.0.1 --save '' --appendonly no` (nothing written
  to disk), driven with redis-py: the producer `XADD`s in pipelines of `--batch` entries (blocking
  client, whose commands hiredis packs), the consumer `XREAD BLOCK COUNT --batch`s from id `0`
  (asyncio client).
* dhtmesh: `--nodes` (4) `dhtmesh run` processes, each on a loopback address of its own, bootstrapped
  from the first. A user is added through the first (`dhtmesh user add`, the password in
  `DHTMESH_PASSWORD`) and logs in (`POST /token`); each case's stream is created (`PUT /streams/{sid}`)
  and its three homes read back from its info. Entries are pushed through node A (`WS /data/{sid}/push`,
  `batch=true`: a JSON frame of end offsets, then the entries' bytes) and pulled through node B
  (`WS /data/{sid}/pull?last_entry_id=0&count=--batch`). A is a node that is not one of the stream's
  homes when there is one (so every entry is forwarded to the homes), B another node, a home or not;
  each row says which. With 4 nodes and 3 homes at most one node is no home.

Both sides run the same code, only the adapters (`Sender`, `Receiver`) differ: the consumer in this
process (on uvloop), the producer in a process of its own, started and connected before the clock
starts (in one process, redis-py's per-command work took the consumer's time). Each entry is 1 KiB:
its sequence number and, in the latency case, its send time (`perf_counter_ns`: CLOCK_MONOTONIC, one
clock for every process), then fixed random bytes. Each system gets a warm-up case first, not timed.

Cases:
* `throughput`: `--entries` (100,000) entries in sends of `--batch` (1,000); entries/s end to end, from
  the first send to the last entry received. Every entry must arrive exactly once and in order
  (`lost`, `duplicates`, `out_of_order`): a case with any of them gets no ratio.
* `latency`: one entry per send (Redis: one `XADD`; dhtmesh: one binary push frame, `batch=false`) at
  `--rate` (1,000) entries/s for `--seconds` (5) s, paced against the clock; the consumer reads with
  `COUNT`/`count` LATENCY_COUNT. Send-to-receive latency p50, p99, max in ms (`bench_common.percentile`).

Also per row: the CPU time each process used during the case (consumer, producer, redis-server, nodes),
which says what limits throughput on this 2-core machine. ptg-api-server itself cannot run here;
the issue's measured figure for it (~2,900 entries/s end to end, driven by ptgctl) is quoted in a row
marked `quoted`, not measured.

Output: a table and the targets (dhtmesh: >= 20,000 entries/s; latency p50 < 2 ms, p99 < 20 ms) with
whether they were met, then, as the very last stdout line, one JSON document
`{"bench": "streams", "rows": [...], "ratios": [...], "targets": [...]}` (ratios: dhtmesh / Redis).
"""

import argparse
import asyncio
import itertools
import multiprocessing
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from bench_common import percentile, rounded
from bench_farmers import stop_all
from bench_jobs import machine_busy_s, wait_joined
from bench_proxy import free_port, report, run_loop, spawn, terminate_on_sigterm

from dhtmesh.client import ApiError
from dhtmesh.client.streams import StreamClient
from dhtmesh.node.wire.netgroup import loopback_host
from dhtmesh.testing import DHTMESH, run_cli, wait_ready

HOST = "127.0.0.1"
ENTRY_BYTES = 1024
HEADER = struct.Struct("!QQ")  # sequence number, send time in perf_counter_ns (0: not timed)
FILL = random.Random(17).randbytes(ENTRY_BYTES - HEADER.size)  # incompressible, the same every run
USER, PASSWORD = "bench", "bench-streams-password"
LATENCY_COUNT = 10  # how many entries a latency consumer takes per read
WARM_UP_ENTRIES = 500
READ_WAIT = 1.0  # seconds a consumer waits for entries before it checks whether the producer is done
QUIET = 10.0  # seconds without an entry, once the producer is done, after which none is expected
CASE_TIMEOUT = 300.0  # seconds a case may take
REDIS_READY_TIMEOUT = 20.0
PRODUCER_READY_TIMEOUT = 60.0  # seconds a producer process may take to start and connect
PRODUCER_STOP_TIMEOUT = 30.0
LOGIN_TIMEOUT = 30.0  # seconds a new account may take to be found from another node
TARGETS = (  # issue 17's, for dhtmesh: (case, metric, bound, whether above it is good)
    ("throughput", "entries_per_s", 20_000, True),
    ("latency", "p50_ms", 2.0, False),
    ("latency", "p99_ms", 20.0, False),
)
PTG_QUOTED = {
    "case": "throughput",
    "system": "ptg (quoted)",
    "entries_per_s": 2900,
    "quoted": "issue 17: ptg-api-server on Redis, driven by ptgctl, measured on this machine class; not run here",
}


def entry(seq: int, sent_ns: int = 0) -> bytes:
    return HEADER.pack(seq, sent_ns) + FILL


# ---- the two systems behind one pair of interfaces --------------------------------------------------


class Sender(Protocol):
    async def send(self, entries: list[bytes]) -> None: ...


class Receiver(Protocol):
    async def recv(self) -> list[bytes]:
        """The next entries' payloads, in order; [] when none came within READ_WAIT."""
        ...


@dataclass
class RedisSender:
    """redis-py's blocking client: the producer has a process of its own, where nothing else waits on its
    loop, and the blocking client packs commands with hiredis (the asyncio one in Python: 3x the CPU time
    per entry, measured)."""

    client: redis.Redis
    key: str

    async def send(self, entries: list[bytes]) -> None:
        if len(entries) == 1:
            self.client.xadd(self.key, {"d": entries[0]})
            return
        pipe = self.client.pipeline(transaction=False)
        for payload in entries:
            pipe.xadd(self.key, {"d": payload})
        pipe.execute()


@dataclass
class RedisReceiver:
    client: aioredis.Redis
    key: str
    count: int
    last: bytes | str = "0"

    async def recv(self) -> list[bytes]:
        reply = await self.client.xread({self.key: self.last}, count=self.count, block=int(READ_WAIT * 1000))
        items = [item for _, stream in _streams(reply) for item in stream]
        if items:
            self.last = items[-1][0]
        return [fields[b"d"] for _, fields in items]


def _streams(reply: Any) -> list:
    """XREAD's reply as [(key, [(id, fields), ...])] whether the connection speaks RESP2 or RESP3."""
    return list(reply.items()) if isinstance(reply, dict) else list(reply or [])


@dataclass
class MeshSender:
    pusher: Any  # client.streams' Pusher

    async def send(self, entries: list[bytes]) -> None:
        await self.pusher.send(entries)


@dataclass
class MeshReceiver:
    """A puller's entries. A `recv` still waiting after READ_WAIT is kept for the next call, not cancelled:
    cancelled between its two frames, it would leave the socket half a frame pair on."""

    puller: Any  # client.streams' Puller
    waiting: asyncio.Task | None = None

    async def recv(self) -> list[bytes]:
        if self.waiting is None:
            self.waiting = asyncio.ensure_future(self.puller.recv())
        done, _ = await asyncio.wait({self.waiting}, timeout=READ_WAIT)
        if not done:
            return []
        task, self.waiting = self.waiting, None
        return [data for _, _, data in task.result()]

    async def close(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()
            with suppress(asyncio.CancelledError):
                await self.waiting


# ---- the two cases, the same for both systems ---------------------------------------------------------


@dataclass
class Flow:
    """What one case sent and what its consumer saw."""

    expected: int
    seqs: list[int] = field(default_factory=list)  # in arrival order
    latencies_ms: list[float] = field(default_factory=list)
    began_ns: int = 0  # the first send
    last_ns: int = 0  # the last entry received
    producer_cpu_s: float = 0.0  # the producer process's CPU time from the first send to the last
    cpu_s: dict[str, float] = field(default_factory=dict)  # `CpuMeter.spent`

    @property
    def seconds(self) -> float:
        return max(self.last_ns - self.began_ns, 1) / 1e9

    def faults(self) -> dict[str, int]:
        distinct = set(self.seqs)
        return {
            "received": len(self.seqs),
            "lost": len(set(range(self.expected)) - distinct),
            "duplicates": len(self.seqs) - len(distinct),
            "out_of_order": sum(later <= earlier for earlier, later in itertools.pairwise(self.seqs)),
        }


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int


def cpu_s(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """The CPU time each of some processes, this one ("consumer") and the producer used between `__init__`
    and `spent`; and what the rest of the machine used meanwhile ("others": other work on the machine,
    which the figures of a run that shared it with much of it are not to be compared with)."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self.before = self._now()

    def _now(self) -> dict[str, float]:
        own = {"consumer": time.process_time(), "machine": machine_busy_s()}
        return {proc.name: cpu_s(proc.pid) for proc in self.procs} | own

    def spent(self, flow: Flow) -> dict[str, float]:
        """With the producer's, as `flow` has it."""
        spent = {name: value - self.before[name] for name, value in self._now().items()}
        spent["producer"] = flow.producer_cpu_s
        machine = spent.pop("machine")
        spent["others"] = max(0.0, machine - sum(spent.values()))
        return {name: round(value, 2) for name, value in spent.items()}


async def consume(receiver: Receiver, flow: Flow, produced: Callable[[], bool]) -> None:
    """Until every entry arrived, or the producer is done (`produced()`) and nothing more came for QUIET s."""
    quiet_since = time.monotonic()
    while len(flow.seqs) < flow.expected:
        payloads = await receiver.recv()
        now = time.perf_counter_ns()
        if payloads:
            quiet_since = time.monotonic()
        elif produced() and time.monotonic() - quiet_since > QUIET:
            return
        for payload in payloads:
            seq, sent_ns = HEADER.unpack_from(payload)
            flow.seqs.append(seq)
            if sent_ns:
                flow.latencies_ms.append((now - sent_ns) / 1e6)
        flow.last_ns = now if payloads else flow.last_ns


@dataclass(frozen=True)
class Target:
    """Where a producer sends, as another process can connect to it."""

    system: str  # "redis" or "dhtmesh"
    address: str  # redis: its port; dhtmesh: the URL of the node pushed through
    key: str  # the stream
    token: str = ""


@dataclass(frozen=True)
class Plan:
    """What a producer sends: `entries` in sends of `batch`, as fast as it can or paced at `rate` entries/s
    against the clock (then each entry carries its send time); `batched`: dhtmesh's push in batch mode."""

    entries: int
    batch: int
    batched: bool
    rate: float | None = None


@asynccontextmanager
async def sender_to(target: Target, batched: bool) -> AsyncIterator[Sender]:
    if target.system == "redis":
        with redis.Redis(host=HOST, port=int(target.address)) as client:
            client.ping()
            yield RedisSender(client, target.key)
        return
    async with _client(target.address, target.token) as client, client.push(target.key, batch=batched) as pusher:
        yield MeshSender(pusher)


@dataclass(frozen=True)
class Signals:
    """Between this process and a producer process."""

    ready: Any  # set by the producer: connected
    go: Any  # set here: start sending
    sent: Any  # set by the producer: every send returned (then `report` holds its figures)
    finish: Any  # set here: everything arrived (or never will); the producer may hang up
    report: Any  # a queue: (the first send's perf_counter_ns, the CPU time the sending took)

    @classmethod
    def new(cls, context: Any) -> "Signals":
        return cls(context.Event(), context.Event(), context.Event(), context.Event(), context.Queue())


async def run_case(target: Target, receiver: Receiver, plan: Plan, procs: list[Proc]) -> Flow:
    """The producer in a process of its own, started and connected before the clock starts; the consumer
    here. (One process for both halved Redis' figure: redis-py's per-command work took the consumer's
    time, measured.) The CPU time of `procs` and the rest is metered from the go until all arrived."""
    context = multiprocessing.get_context("spawn")
    signals = Signals.new(context)
    producer = context.Process(target=produce, args=(target, plan, signals), daemon=True)
    producer.start()
    try:
        if not await asyncio.to_thread(started, signals.ready, producer):
            raise RuntimeError(f"the {target.system} producer did not connect (exit {producer.exitcode})")
        flow = Flow(plan.entries)
        meter = CpuMeter(procs)
        signals.go.set()
        async with asyncio.timeout(CASE_TIMEOUT):
            await consume(receiver, flow, lambda: signals.sent.is_set() or producer.exitcode is not None)
        if not await asyncio.to_thread(signals.sent.wait, PRODUCER_STOP_TIMEOUT):  # its last send may return late
            raise RuntimeError(f"the {target.system} producer failed (exit {producer.exitcode})")
        flow.began_ns, flow.producer_cpu_s = signals.report.get(timeout=PRODUCER_STOP_TIMEOUT)
        flow.cpu_s = meter.spent(flow)
        return flow
    finally:
        signals.finish.set()
        await asyncio.to_thread(producer.join, PRODUCER_STOP_TIMEOUT)
        if producer.is_alive():
            producer.kill()  # our own child, by its PID
            producer.join()


def started(ready: Any, producer: Any) -> bool:
    """Whether the producer process said it is connected before it exited or PRODUCER_READY_TIMEOUT passed."""
    deadline = time.monotonic() + PRODUCER_READY_TIMEOUT
    while not ready.wait(0.1):
        if producer.exitcode is not None or time.monotonic() > deadline:
            return False
    return True


def produce(target: Target, plan: Plan, signals: Signals) -> None:
    """The producer process: connect, say so, wait for the go, send as `plan` says, report; then keep the
    connection until told to finish (a push socket closed early would cut off what the node has not read
    yet, without acks: not the system's loss)."""

    async def run() -> None:
        async with sender_to(target, plan.batched) as sender:
            signals.ready.set()
            if not await asyncio.to_thread(signals.go.wait, PRODUCER_READY_TIMEOUT):
                raise RuntimeError("no go")
            first, cpu = time.perf_counter_ns(), time.process_time()
            for start in range(0, plan.entries, plan.batch):
                await pace(first, start, plan.rate)
                sent_ns = time.perf_counter_ns() if plan.rate else 0
                await sender.send([entry(seq, sent_ns) for seq in range(start, min(start + plan.batch, plan.entries))])
            signals.report.put((first, time.process_time() - cpu))
            signals.sent.set()
            await asyncio.to_thread(signals.finish.wait, CASE_TIMEOUT)

    run_loop(run())


async def pace(first_ns: int, index: int, rate: float | None) -> None:
    """Until entry `index` is due, at `rate` entries/s from `first_ns` (at once when there is no rate)."""
    if rate:
        delay = (first_ns + index * 1e9 / rate - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)


# ---- processes ----------------------------------------------------------------------------------------


@contextmanager
def redis_server(tmp: Path) -> Iterator[tuple[int, Proc]]:
    """A redis-server on a free loopback port, with nothing written to disk; its port."""
    port = free_port(socket.SOCK_STREAM)
    args = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    args += ["--dir", str(tmp)]
    process = spawn(args, tmp / "redis.log")
    try:
        wait_redis(port)
        yield port, Proc("redis", process.pid)
    finally:
        stop_all([process])


def wait_redis(port: int) -> None:
    deadline = time.monotonic() + REDIS_READY_TIMEOUT
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not become ready")
        time.sleep(0.1)


@dataclass(frozen=True)
class MeshNode:
    name: str
    url: str
    node_id: str
    pid: int


@contextmanager
def dhtmesh_mesh(tmp: Path, size: int) -> Iterator[list[MeshNode]]:
    """`size` nodes, each on a loopback address of its own (nodes limit contacts per host), joined."""
    processes: list[subprocess.Popen] = []
    try:
        nodes: list[MeshNode] = []
        bootstrap: list[str] = []
        for index in range(size):
            args = ["run", "-p", "0", "--bind", loopback_host(index + 1), "--proxyserver", "0"]
            args += ["--persist", str(tmp / f"n{index}"), *bootstrap]
            process = spawn([*DHTMESH, *args], tmp / f"n{index}.log", stdout_pipe=True)
            processes.append(process)
            ready = wait_ready(process)
            nodes.append(MeshNode(f"n{index}", ready["proxy"], ready["node_id"], process.pid))
            bootstrap = bootstrap or ["-b", ready["udp"]]
        wait_joined([node.url for node in nodes])
        yield nodes
    finally:
        stop_all(processes)


def add_user(url: str) -> None:
    added = run_cli("user", "add", USER, "--url", url, env={"DHTMESH_PASSWORD": PASSWORD})
    if added.returncode != 0:
        raise RuntimeError(f"dhtmesh user add failed: {added.stderr.strip()}")


# ---- each system's run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    entries: int
    batch: int
    rate: float
    seconds: float

    @property
    def latency_entries(self) -> int:
        return max(1, round(self.rate * self.seconds))


Record = Callable[[str, str, Flow, dict[str, Any]], None]
"""Takes a case's flow on a system, with its details, as soon as it is measured."""


async def redis_runs(port: int, server: Proc, sizes: Sizes, record: Record) -> None:
    async with aioredis.Redis(host=HOST, port=port) as consumer:
        await consumer.ping()
        for case, plan, count in cases(sizes):
            flow = await run_case(
                Target("redis", str(port), case), RedisReceiver(consumer, case, count), plan, [server]
            )
            if case != "warm-up":
                record(case, "redis", flow, {"cpu_s": flow.cpu_s})


def cases(sizes: Sizes) -> list[tuple[str, Plan, int]]:
    """Each case: its name, what the producer sends, how many entries the consumer takes per read."""
    return [
        ("warm-up", Plan(WARM_UP_ENTRIES, sizes.batch, batched=True), sizes.batch),
        ("throughput", Plan(sizes.entries, sizes.batch, batched=True), sizes.batch),
        ("latency", Plan(sizes.latency_entries, 1, batched=False, rate=sizes.rate), LATENCY_COUNT),
    ]


@asynccontextmanager
async def mesh_stream(
    nodes: list[MeshNode], token: str, sid: str, count: int
) -> AsyncIterator[tuple[Target, Receiver, dict[str, Any]]]:
    """A fresh stream `sid`; where to push to it: a node that is not one of its homes (when there is one);
    a puller from its start through another node; and which nodes those are."""
    async with AsyncExitStack() as stack:
        admin = await stack.enter_async_context(_client(nodes[0].url, token))
        await admin.put_stream(sid, {"max_len": 10_000_000})  # no retention trims an entry before it is read
        homes = list((await admin.stream(sid)).get("homes") or [])
        push_node, pull_node = pick_nodes(nodes, homes)
        pulling = await stack.enter_async_context(_client(pull_node.url, token))
        puller = await stack.enter_async_context(pulling.pull(sid, last_entry_id="0", count=count))
        receiver = MeshReceiver(puller)
        stack.push_async_callback(receiver.close)
        names = {node.node_id: node.name for node in nodes}
        where = {"push": push_node.name, "pull": pull_node.name, "homes": [names.get(h, h) for h in homes]}
        yield Target("dhtmesh", push_node.url, sid, token), receiver, where


@asynccontextmanager
async def _client(url: str, token: str | None = None) -> AsyncIterator[StreamClient]:
    client = StreamClient(url, token)
    try:
        yield client
    finally:
        await client.close()


async def login(url: str) -> str:
    """A token for the bench's user through the node at `url`, once the account's record is found there."""
    deadline = time.monotonic() + LOGIN_TIMEOUT
    async with _client(url) as client:
        while True:
            try:
                return await client.login(USER, PASSWORD)
            except ApiError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)


def pick_nodes(nodes: list[MeshNode], homes: list[str]) -> tuple[MeshNode, MeshNode]:
    """Push through a node that is no home of the stream if there is one; pull through another, preferring
    a second such node."""
    ordered = sorted(nodes, key=lambda node: node.node_id in homes)  # non-homes first, else in order
    return ordered[0], ordered[1]


async def mesh_runs(nodes: list[MeshNode], sizes: Sizes, record: Record) -> None:
    token = await login(nodes[-1].url)  # another node than the account was added through
    procs = [Proc(node.name, node.pid) for node in nodes]
    for case, plan, count in cases(sizes):
        async with mesh_stream(nodes, token, f"bench-{case}", count) as (target, receiver, where):
            flow = await run_case(target, receiver, plan, procs)
            if case != "warm-up":
                record(case, "dhtmesh", flow, {"cpu_s": flow.cpu_s, "nodes": where})


# ---- figures -----------------------------------------------------------------------------------------


def row(case: str, system: str, flow: Flow, sizes: Sizes, detail: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {"case": case, "system": system, "sent": flow.expected, **flow.faults()}
    if case == "throughput":
        figures |= {
            "batch": sizes.batch,
            "seconds": rounded(flow.seconds, 3),
            "entries_per_s": rounded(len(flow.seqs) / flow.seconds, 1),
            "mib_per_s": rounded(len(flow.seqs) * ENTRY_BYTES / flow.seconds / 2**20, 1),
        }
    else:
        figures |= {
            "rate": sizes.rate,
            "p50_ms": rounded(percentile(flow.latencies_ms, 50), 3),
            "p99_ms": rounded(percentile(flow.latencies_ms, 99), 3),
            "max_ms": rounded(max(flow.latencies_ms, default=None), 3),
        }
    return figures | detail


def clean(figures: dict[str, Any]) -> bool:
    return not (figures.get("lost") or figures.get("duplicates") or figures.get("out_of_order"))


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """dhtmesh / Redis per case and metric (cases with nothing lost, duplicated or reordered); and the
    throughput against ptg-api-server's quoted figure, as case "throughput vs ptg (quoted)"."""
    by = {(r["case"], r["system"]): r for r in rows}
    result = []
    for case, metrics, anchor_system, name in (
        ("throughput", ("entries_per_s",), "redis", "throughput"),
        ("latency", ("p50_ms", "p99_ms"), "redis", "latency 1000/s"),
        ("throughput", ("entries_per_s",), PTG_QUOTED["system"], "throughput vs ptg (quoted)"),
    ):
        mine, anchor = by.get((case, "dhtmesh")), by.get((case, anchor_system))
        if mine is None or anchor is None or not clean(mine) or not clean(anchor):
            continue
        for metric in metrics:
            if mine.get(metric) is not None and anchor.get(metric):
                ratio = round(mine[metric] / anchor[metric], 3)
                result.append(
                    {"case": name, "metric": metric, "dhtmesh": mine[metric], "anchor": anchor[metric], "ratio": ratio}
                )
    return result


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["case"], r["system"]): r for r in rows}
    result = []
    for case, metric, bound, above in TARGETS:
        mine = by.get((case, "dhtmesh"), {})
        value = mine.get(metric)
        met = value is not None and clean(mine) and (value >= bound if above else value < bound)
        result.append(
            {
                "case": case,
                "metric": metric,
                "target": f"{'>=' if above else '<'} {bound:g}",
                "dhtmesh": value,
                "met": met,
            }
        )
    return result


def print_table(rows: list[dict[str, Any]], goals: list[dict[str, Any]]) -> None:
    columns = (
        ("case", 10), ("system", 12), ("sent", 7), ("received", 8), ("lost", 5), ("duplicates", 10),
        ("out_of_order", 12), ("seconds", 8), ("entries_per_s", 13), ("mib_per_s", 9), ("p50_ms", 8),
        ("p99_ms", 8), ("max_ms", 8),
    )  # fmt: skip
    print(" ".join(f"{name:>{width}}" for name, width in columns))
    for r in rows:
        print(" ".join(f"{_cell(r.get(name)):>{width}}" for name, width in columns))
    for r in rows:
        if "nodes" in r or "cpu_s" in r:
            print(f"{r['case']:<10} {r['system']:<8} nodes {r.get('nodes', '-')} cpu_s {r.get('cpu_s', '-')}")
    print(f"quoted, not measured: {PTG_QUOTED['quoted']}")
    for goal in goals:
        verdict = "met" if goal["met"] else "NOT met"
        print(f"target {goal['case']} {goal['metric']} {goal['target']}: dhtmesh {_cell(goal['dhtmesh'])} {verdict}")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


# ---- the run ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000, help="throughput entries (default 100,000)")
    # A batch is what a client sends at once (ptgctl sends what it is given); both systems get the same.
    parser.add_argument("--batch", type=int, default=1000, help="entries per push and per pull (default 1,000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency case: entries/s (default 1,000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency case: how long (default 5)")
    parser.add_argument("--nodes", type=int, default=4, help="dhtmesh nodes (default 4, at least 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 entries, 2 s of latency")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document to PATH")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    entries, seconds = (10_000, 2.0) if args.quick else (max(1, args.entries), max(0.1, args.seconds))
    sizes = Sizes(entries, max(1, args.batch), max(1.0, args.rate), seconds)
    doc: dict[str, Any] = {
        "bench": "streams",
        "entry_bytes": ENTRY_BYTES,
        "nodes": max(2, args.nodes),
        "sizes": vars(sizes),
        "rows": [],
        "ratios": [],
    }
    terminate_on_sigterm()

    def record(case: str, system: str, flow: Flow, detail: dict[str, Any]) -> None:
        doc["rows"].append(row(case, system, flow, sizes, detail))
        print(f"{case:<10} {system:<8} {doc['rows'][-1]}", flush=True)

    def work() -> None:
        with tempfile.TemporaryDirectory(prefix="bench_streams-") as tmp:
            with redis_server(Path(tmp)) as (port, server):
                run_loop(redis_runs(port, server, sizes, record))
            with dhtmesh_mesh(Path(tmp), doc["nodes"]) as nodes:
                add_user(nodes[0].url)
                run_loop(mesh_runs(nodes, sizes, record))
        doc["rows"].append(dict(PTG_QUOTED))
        doc["ratios"], doc["targets"] = ratios(doc["rows"]), targets(doc["rows"])
        print_table(doc["rows"], doc["targets"])
        if not all(clean(r) for r in doc["rows"]):
            raise RuntimeError("entries were lost, duplicated or reordered")

    return report("bench_streams", doc, args.json, work)


if __name__ == "__main__":
    sys.exit(main())
