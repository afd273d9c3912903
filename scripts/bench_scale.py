#!/usr/bin/env python3
"""Scale and churn: many dhtmesh `DhtNode`s (production defaults, `NodeConfig()`) spread over several OS
processes on 127.0.0.1 (ephemeral UDP ports), every process hosting many nodes in one asyncio loop.

How it runs: this script re-invokes itself as worker processes (hidden `--worker` flag, each in its own
process group). A worker starts its nodes, joins them, prints one JSON line with their addresses and ids,
then answers JSON commands read line by line from stdin with one JSON line each on stdout (`lookup_self`,
`op`, `puts`, `holders`, `reads`, `settle`, `quit`). The parent drives the workers and kills them by process
group at the end (SIGKILL is also how churn kills a whole process: to its peers that is a crash).
Worker 0 starts first and stars its nodes to its node 0; the other workers' nodes join that node.

1. `scale`, per size N from `--sizes` (default 50,200,500) over `--procs` processes (default 5): after the
   joins every node looks up its own id (all at once); then 200 puts (distinct keys, 100-byte values) from
   random nodes, one at a time; 0.5 s later every process reports which of its nodes hold which key; then
   200 gets, one at a time, each from a random node (any process) that does not hold the key locally.
   Per phase: success (put: >= 1 replica acked; get: the value put is returned), p50/p99 latency (ms,
   `perf_counter` around the awaited call inside the requester's process), RPCs per op (the requester's
   requests sent and retried, counted through a contextvar that every task of the op inherits) and lookup
   hops, both reported by the node's observation hooks (`bench_common.observe`, as scripts/bench_dht.py
   does): the depth at which each contact was learnt (1: from the requester's own table, d+1: from a reply
   of a depth-d contact); an op's hops are the deepest contact it asked. p50/p99 are nearest-rank
   (`bench_common.percentile`). Comparing the median hops over the sizes shows how they grow with
   log2 N ("hops_vs_log2n" in the JSON document).
2. `churn`: 100 nodes over 10 processes (10 each); 1,000 values put from random nodes (8 concurrent puts per
   process). Then 3 waves: SIGKILL one whole random process (10 % of the nodes) while a new process with 10
   fresh nodes joins through a node of a survivor; then every live process settles its nodes (each node
   looks up its own id, then `replicator.repair()`, as tests/test_faults.py `settle()` does) and the time
   of the lookups and of the repair is recorded per wave. At the end:
     readable             fraction of successful gets: every value from one random survivor node, plus 20
                          random values from a random node of every surviving process;
     replicas_at_target   fraction of values whose k closest live nodes (k = 20, over all live processes)
                          all hold them; also reported after one more settle round ("after_extra_settle"),
                          since repair is periodic in a live mesh. For up to 5 values short of target,
                          "short_examples" lists the ranks (0 = closest) of the k closest live nodes that
                          lack them and how many of those joined during the churn.

Output: a table, then as the very last stdout line one JSON document {"bench": "scale", "rows", "ratios":
[], ...} (printed by bench_proxy.emit); `--json PATH` writes it to PATH too. The machine's CPU count and
load average are recorded: all processes share its cores, so latency here includes CPU contention.
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import OP, Trace, observe, percentile, rounded

from dhtmesh.crypto import Identity
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.node.values.value import Value, new_value_id
from dhtmesh.node.wire.netgroup import loopback_host

HOSTS_PER_WORKER = 1000  # worker w's nodes are on loopback_host(1 + 1000 w + i)
VALUE_SIZE = 100
OPS = 200
OP_TIMEOUT = 30.0
JOIN_TIMEOUT = 60.0
JOIN_CONCURRENCY = 4
READY_TIMEOUT = 600.0
COMMAND_TIMEOUT = 900.0
REPLICA_PAUSE = 0.5
PUT_CONCURRENCY = 8
READ_CONCURRENCY = 8
WAVES = 3
SAMPLE_PER_PROCESS = 20
K = NodeConfig().k
Address = tuple[str, int]


# ---- per-op tracing (inside a worker) -----------------------------------------------------------------


def key_of(name: str) -> bytes:
    return hashlib.sha1(name.encode()).digest()


def data_of(name: str) -> bytes:
    return (hashlib.sha256(name.encode()).digest() * 4)[:VALUE_SIZE]


# ---- the worker process ------------------------------------------------------------------------------


class Worker:
    """Hosts `count` nodes in this process and answers the parent's commands."""

    def __init__(self, count: int, first_host: int) -> None:
        self.nodes = [DhtNode(Identity.generate(), NodeConfig(), rules=RECORD_RULES) for _ in range(count)]
        self.first_host = first_host

    async def start(self, seed: Address | None) -> dict[str, Any]:
        started = time.perf_counter()
        for index, node in enumerate(self.nodes):
            # Each node on a loopback address of its own: nodes limit how many contacts share a host.
            await node.start(loopback_host(self.first_host + index), 0)
            observe(node)
        joiners = self.nodes
        if seed is None:
            seed, joiners = self.nodes[0].address, self.nodes[1:]
        window = asyncio.Semaphore(JOIN_CONCURRENCY)
        failed = 0

        async def join(node: DhtNode) -> None:
            nonlocal failed
            async with window:
                try:
                    await asyncio.wait_for(node.join([seed]), JOIN_TIMEOUT)
                except Exception:
                    failed += 1

        await asyncio.gather(*(join(node) for node in joiners))
        return {
            "ready": True,
            "pid": os.getpid(),
            "addresses": [list(node.address) for node in self.nodes],
            "ids": [node.node_id.hex() for node in self.nodes],
            "join_s": round(time.perf_counter() - started, 2),
            "join_failed": failed,
            "table_min": min(node.contact_count() for node in self.nodes),
        }

    async def traced(self, index: int, kind: str, name: str) -> dict[str, Any]:
        """One put, get or own-id lookup from node `index` under its own trace; never raises."""
        node = self.nodes[index]
        key = key_of(name) if kind != "lookup" else node.node_id
        local = kind == "get" and self.holds(index, name)
        trace = Trace()
        token = OP.set(trace)
        started = time.perf_counter()
        err = ""
        try:
            if kind == "put":
                result = await asyncio.wait_for(node.put(key, Value(new_value_id(), data_of(name))), OP_TIMEOUT)
                ok, extra = result.replicas >= 1, {"replicas": result.replicas}
            elif kind == "get":
                values = await asyncio.wait_for(node.get(key), OP_TIMEOUT)
                ok, extra = any(v.data == data_of(name) for v in values), {}
            else:
                ok, extra = bool(await asyncio.wait_for(node.lookup(key), OP_TIMEOUT)), {}
        except Exception as error:
            ok, err, extra = False, repr(error)[:120], {}
        finally:
            OP.reset(token)
        ms = (time.perf_counter() - started) * 1000
        counts = trace.counts
        rpcs = counts["rpc_out"] + counts["rpc_retries"]
        return (
            {"ok": ok, "ms": round(ms, 3), "rpcs": rpcs, "hops": counts["hops"], "local": local, "err": err}
            | {"timeouts": counts["rpc_timeouts"]}
            | extra
        )

    def holds(self, index: int, name: str) -> bool:
        return any(v.data == data_of(name) for v in self.nodes[index].held(key_of(name)))

    async def batch(self, kind: str, items: list[list[Any]], concurrency: int) -> list[dict[str, Any]]:
        window = asyncio.Semaphore(concurrency)

        async def one(index: int, name: str) -> dict[str, Any]:
            async with window:
                return await self.traced(index, kind, name)

        return list(await asyncio.gather(*(one(index, name) for index, name in items)))

    async def settle(self) -> dict[str, Any]:
        started = time.perf_counter()
        await asyncio.gather(*(node.lookup(node.node_id) for node in self.nodes), return_exceptions=True)
        middle = time.perf_counter()
        sent = await asyncio.gather(*(node.replicator.repair() for node in self.nodes), return_exceptions=True)
        ended = time.perf_counter()
        return {
            "lookup_s": round(middle - started, 2),
            "repair_s": round(ended - middle, 2),
            "repaired": sum(s for s in sent if isinstance(s, int)),
            "repair_errors": sum(isinstance(s, BaseException) for s in sent),
        }

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        cmd = command["cmd"]
        if cmd == "lookup_self":
            results = await asyncio.gather(*(self.traced(i, "lookup", "") for i in range(len(self.nodes))))
            return {"results": results}
        if cmd == "op":
            return await self.traced(command["node"], command["kind"], command["name"])
        if cmd in ("puts", "reads"):
            kind = "put" if cmd == "puts" else "get"
            return {"results": await self.batch(kind, command["items"], command.get("concurrency", 8))}
        if cmd == "holders":
            return {
                "holders": {
                    name: [i for i in range(len(self.nodes)) if self.holds(i, name)] for name in command["names"]
                }
            }
        if cmd == "settle":
            return await self.settle()
        if cmd == "timeouts":
            return {"timeouts": sum(node.counters.get("rpc_timeouts") for node in self.nodes)}
        return {"error": f"unknown command {cmd!r}"}

    async def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.stop()


def reply(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def worker_main(count: int, first_host: int, seed: Address | None) -> None:
    worker = Worker(count, first_host)
    loop = asyncio.get_running_loop()
    try:
        reply(await worker.start(seed))
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            if command.get("cmd") == "quit":
                reply({"bye": True})
                break
            try:
                reply(await worker.handle(command))
            except Exception as error:
                reply({"error": repr(error)[:300]})
    finally:
        await worker.stop()


# ---- the parent: driving workers ------------------------------------------------------------------


class Proc:
    """One worker process: a JSON line in on stdin, a JSON line out on stdout (read with a deadline)."""

    def __init__(self, wid: int, count: int, seed: Address | None, workdir: Path) -> None:
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--nodes", str(count)]
        command += ["--first-host", str(1 + wid * HOSTS_PER_WORKER)]
        if seed is not None:
            command += ["--seed-addr", f"{seed[0]}:{seed[1]}"]
        self.wid = wid
        self.stderr_path = workdir / f"err.{wid}"
        with open(self.stderr_path, "w") as err:
            self.popen = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True
            )
        self.buffer = b""
        self.addresses: list[Address] = []
        self.ids: list[bytes] = []
        self.info: dict[str, Any] = {}

    def send(self, command: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(command) + "\n").encode())
        self.popen.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"worker {self.wid}: no answer within {timeout} s")
            readable, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if readable:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"worker {self.wid} exited: {self.stderr_tail()}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.wid}: {answer['error']}")
        return answer

    def call(self, command: dict[str, Any], timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
        self.send(command)
        return self.receive(timeout)

    def wait_ready(self) -> None:
        self.info = self.receive(READY_TIMEOUT)
        self.addresses = [(host, port) for host, port in self.info["addresses"]]
        self.ids = [bytes.fromhex(node_id) for node_id in self.info["ids"]]

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text()[-600:]
        return ""

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (its own session) and reap it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


def call_all(procs: list["Proc"], command: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send each worker its command first (so they work in parallel), then collect the answers."""
    commands = command if isinstance(command, list) else [command] * len(procs)
    for proc, one in zip(procs, commands, strict=True):
        proc.send(one)
    return [proc.receive(COMMAND_TIMEOUT) for proc in procs]


def spread(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def start_mesh(total: int, parts: int, workdir: Path, live: list[Proc]) -> list[Proc]:
    """Worker 0 first; the others bootstrap to its node 0 (started in parallel). `live` collects every
    process started, so the caller's `finally` stops them even if starting fails half-way."""
    counts = spread(total, parts)
    first = Proc(0, counts[0], None, workdir)
    live.append(first)
    first.wait_ready()
    seed = first.addresses[0]
    others = [Proc(wid, counts[wid], seed, workdir) for wid in range(1, parts)]
    live += others
    for proc in others:
        proc.wait_ready()
    return [first, *others]


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        with contextlib.suppress(Exception):
            if proc.popen.poll() is None:
                proc.send({"cmd": "quit"})
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=15)
        proc.kill()


# ---- statistics ---------------------------------------------------------------------------------


def op_row(case: str, results: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    latencies = [r["ms"] for r in results]
    hops = [r["hops"] for r in results if r["hops"]]
    errors = sorted({r["err"] for r in results if r["err"]})
    row = {
        "case": case,
        "system": "dhtmesh",
        "ops": len(results),
        "success": round(sum(r["ok"] for r in results) / len(results), 4) if results else None,
        "p50_ms": rounded(percentile(latencies, 50), 3),
        "p99_ms": rounded(percentile(latencies, 99), 3),
        "rpcs_per_op": rounded(statistics.mean(r["rpcs"] for r in results)) if results else None,
        "hops_median": statistics.median(hops) if hops else None,
        "hops_max": max(hops) if hops else None,
        "detail": {
            "rpc_timeouts": sum(r["timeouts"] for r in results),
            "local_hits": sum(r["local"] for r in results),
            "hops_mean": rounded(statistics.mean(hops)) if hops else None,
            "errors": errors[:3],
        },
    }
    row["detail"] |= extra or {}
    return row


# ---- part 1: scale ------------------------------------------------------------------------------


def bench_size(n: int, parts: int, seed: int, workdir: Path) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}-scale-{n}")
    live: list[Proc] = []
    try:
        started = time.monotonic()
        procs = start_mesh(n, parts, workdir / f"scale-{n}", live)
        up_s = time.monotonic() - started
        nodes = [(p, i) for p in procs for i in range(len(p.ids))]
        log(f"N={n}: {len(procs)} processes up in {up_s:.1f} s; every node looks up its own id")
        started = time.monotonic()
        self_lookups = [r for answer in call_all(procs, {"cmd": "lookup_self"}) for r in answer["results"]]
        settle_s = time.monotonic() - started
        names = [f"scale-{n}-{i}" for i in range(OPS)]
        puts = []
        for name in names:
            proc, index = rng.choice(nodes)
            puts.append(proc.call({"cmd": "op", "kind": "put", "node": index, "name": name}) | {"proc": proc.wid})
        time.sleep(REPLICA_PAUSE)
        held: dict[str, set[tuple[int, int]]] = {name: set() for name in names}
        for proc, answer in zip(procs, call_all(procs, {"cmd": "holders", "names": names}), strict=True):
            for name, indices in answer["holders"].items():
                held[name] |= {(proc.wid, i) for i in indices}
        gets = []
        requester_held = 0
        for name in (rng.choice(names) for _ in range(OPS)):
            lacking = [(p, i) for p, i in nodes if (p.wid, i) not in held[name]]
            requester_held += not lacking
            proc, index = rng.choice(lacking or nodes)
            gets.append(proc.call({"cmd": "op", "kind": "get", "node": index, "name": name}) | {"proc": proc.wid})
        setup = {
            "n": n,
            "processes": len(procs),
            "up_s": round(up_s, 1),
            "self_lookup_s": round(settle_s, 1),
            "join_failed": sum(p.info["join_failed"] for p in procs),
        }
        replicas = [len(held[name]) for name in names]
        self_hops = [r["hops"] for r in self_lookups if r["hops"]]
        put_row = op_row(
            f"N={n} put",
            puts,
            {"replicas_median": statistics.median(replicas), "replicas_min": min(replicas), "setup": setup},
        )
        get_row = op_row(
            f"N={n} get",
            gets,
            {
                "requester_held": requester_held,
                "cross_process": sum(1 for r in gets if r["proc"] != 0),
                "self_lookup_hops_median": statistics.median(self_hops) if self_hops else None,
                "self_lookup_hops_max": max(self_hops) if self_hops else None,
                "self_lookup_ok": round(sum(r["ok"] for r in self_lookups) / len(self_lookups), 4),
            },
        )
        return [put_row, get_row]
    finally:
        stop_all(live)


# ---- part 2: churn ------------------------------------------------------------------------------


def closest(ids: list[bytes], key: bytes, count: int) -> list[bytes]:
    target = int.from_bytes(key, "big")
    return sorted(ids, key=lambda node_id: int.from_bytes(node_id, "big") ^ target)[:count]


def replica_check(procs: list[Proc], names: list[str], original_procs: int) -> dict[str, Any]:
    """Which live nodes hold each value; whether the k closest live nodes all do (processes numbered
    `original_procs` and up joined during the churn)."""
    held: dict[str, set[bytes]] = {name: set() for name in names}
    for proc, answer in zip(procs, call_all(procs, {"cmd": "holders", "names": names}), strict=True):
        for name, indices in answer["holders"].items():
            held[name] |= {proc.ids[i] for i in indices}
    ids = [node_id for proc in procs for node_id in proc.ids]
    newcomers = {node_id for proc in procs if proc.wid >= original_procs for node_id in proc.ids}
    at_target, closest_holding, short = 0, [], []
    for name in names:
        wanted = closest(ids, key_of(name), K)
        holding = sum(node_id in held[name] for node_id in wanted)
        closest_holding.append(holding)
        at_target += holding == len(wanted)
        if holding < len(wanted) and len(short) < 5:  # evidence: which of the k closest lack it
            missing = [rank for rank, node_id in enumerate(wanted) if node_id not in held[name]]
            lacking_new = sum(wanted[rank] in newcomers for rank in missing)
            short.append({"name": name, "missing_ranks": missing, "missing_newcomers": lacking_new})
    copies = [len(held[name]) for name in names]
    return {
        "replicas_at_target": round(at_target / len(names), 4),
        "closest_holding_min": min(closest_holding),
        "closest_holding_median": statistics.median(closest_holding),
        "copies_min": min(copies),
        "copies_median": statistics.median(copies),
        "lost": sum(c == 0 for c in copies),
        "short_examples": short,
    }


def read_check(procs: list[Proc], names: list[str], rng: random.Random) -> dict[str, Any]:
    items: dict[int, list[list[Any]]] = {proc.wid: [] for proc in procs}
    nodes = [(p, i) for p in procs for i in range(len(p.ids))]
    for name in names:
        proc, index = rng.choice(nodes)
        items[proc.wid].append([index, name])
    for proc in procs:
        for name in rng.sample(names, min(SAMPLE_PER_PROCESS, len(names))):
            items[proc.wid].append([rng.randrange(len(proc.ids)), name])
    commands = [{"cmd": "reads", "items": items[p.wid], "concurrency": READ_CONCURRENCY} for p in procs]
    started = time.monotonic()
    answers = call_all(procs, commands)
    results = [r for answer in answers for r in answer["results"]]
    per_process = {
        str(p.wid): round(sum(r["ok"] for r in a["results"]) / max(1, len(a["results"])), 4)
        for p, a in zip(procs, answers, strict=True)
    }
    latencies = [r["ms"] for r in results]
    return {
        "readable": round(sum(r["ok"] for r in results) / len(results), 4),
        "reads": len(results),
        "failed_reads": sum(not r["ok"] for r in results),
        "read_local_hits": sum(r["local"] for r in results),
        "read_p50_ms": rounded(percentile(latencies, 50), 3),
        "read_p99_ms": rounded(percentile(latencies, 99), 3),
        "readable_per_process": per_process,
        "read_s": round(time.monotonic() - started, 1),
    }


def bench_churn(total: int, parts: int, values: int, seed: int, workdir: Path) -> dict[str, Any]:
    rng = random.Random(f"{seed}-churn")
    per = total // parts
    live: list[Proc] = []
    try:
        started = time.monotonic()
        procs = start_mesh(total, parts, workdir / "churn", live)
        call_all(procs, {"cmd": "lookup_self"})
        log(f"churn: {total} nodes in {parts} processes up and settled in {time.monotonic() - started:.1f} s")
        names = [f"churn-{i}" for i in range(values)]
        items: dict[int, list[list[Any]]] = {proc.wid: [] for proc in procs}
        for name in names:
            proc = rng.choice(procs)
            items[proc.wid].append([rng.randrange(len(proc.ids)), name])
        started = time.monotonic()
        answers = call_all(
            procs, [{"cmd": "puts", "items": items[p.wid], "concurrency": PUT_CONCURRENCY} for p in procs]
        )
        put_results = [r for answer in answers for r in answer["results"]]
        put_s = time.monotonic() - started
        log(f"churn: {values} puts in {put_s:.1f} s, {sum(r['ok'] for r in put_results)} succeeded")
        time.sleep(REPLICA_PAUSE)
        waves = []
        next_wid = parts
        killed_nodes = 0
        for wave in range(1, WAVES + 1):
            victim = rng.choice(procs)
            victim.kill()  # SIGKILL: no goodbye, to its peers this is a crash
            procs.remove(victim)
            killed_nodes += len(victim.ids)
            survivor = rng.choice(procs)
            seed_address = rng.choice(survivor.addresses)
            wave_started = time.monotonic()
            newcomer = Proc(next_wid, per, seed_address, workdir / "churn")
            live.append(newcomer)
            next_wid += 1
            newcomer.wait_ready()
            join_s = time.monotonic() - wave_started
            procs.append(newcomer)
            settle_started = time.monotonic()
            settled = call_all(procs, {"cmd": "settle"})
            wave_info = {
                "wave": wave,
                "killed_process": victim.wid,
                "newcomer_join_s": round(join_s, 2),
                "newcomer_join_failed": newcomer.info["join_failed"],
                "newcomer_table_min": newcomer.info["table_min"],
                "settle_s": round(time.monotonic() - settle_started, 2),
                "lookup_s_max": max(s["lookup_s"] for s in settled),
                "repair_s_max": max(s["repair_s"] for s in settled),
                "repaired_values": sum(s["repaired"] for s in settled),
                "repair_errors": sum(s["repair_errors"] for s in settled),
            }
            waves.append(wave_info)
            log(f"churn wave {wave}: killed process {victim.wid}, new process {newcomer.wid}; {wave_info}")
        replicas = replica_check(procs, names, parts)
        reads = read_check(procs, names, rng)
        started = time.monotonic()
        extra = call_all(procs, {"cmd": "settle"})
        extra_settle = {
            "settle_s": round(time.monotonic() - started, 2),
            "repaired_values": sum(s["repaired"] for s in extra),
        } | replica_check(procs, names, parts)
        original = total
        return {
            "case": f"churn {total} nodes, {round(100 * killed_nodes / original)}% killed",
            "system": "dhtmesh",
            "readable": reads["readable"],
            "replicas_at_target": replicas["replicas_at_target"],
            "repair_s_per_wave": [w["repair_s_max"] for w in waves],
            "values": values,
            "put_success": round(sum(r["ok"] for r in put_results) / len(put_results), 4),
            "detail": {
                "processes": parts,
                "nodes_per_process": per,
                "put_s": round(put_s, 1),
                "waves": waves,
                "replicas": replicas,
                "reads": reads,
                "after_extra_settle": extra_settle,
            },
        }
    finally:
        stop_all(live)


# ---- report -----------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def hops_growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row["case"].endswith(" get") and row["case"].startswith("N="):
            n = int(row["case"][2:].split()[0])
            median = row["hops_median"]
            ratio = round(median / math.log2(n), 3) if median else None
            out.append({"n": n, "log2_n": round(math.log2(n), 2), "hops_median": median, "per_log2_n": ratio})
    return out


def print_report(document: dict[str, Any]) -> None:
    host = document["host"]
    print(
        f"dhtmesh at scale (127.0.0.1, several processes x many nodes; {host['cpus']} CPUs, load average "
        f"{host['loadavg_start'][0]:.2f} at start, {host['loadavg_end'][0]:.2f} at end)"
    )
    ops = [row for row in document["rows"] if "p50_ms" in row]
    if ops:
        header = f"{'case':<14}{'ops':>5}{'success':>9}{'p50ms':>10}{'p99ms':>10}{'rpc/op':>8}{'hops med':>9}"
        header += f"{'hops max':>9}{'tmo':>5}  notes"
        print(header)
        print("-" * len(header))
        for row in ops:
            info = row["detail"]
            notes = ""
            if "setup" in info:
                setup = info["setup"]
                notes = f"{setup['processes']} procs up {setup['up_s']} s, replicas median {info['replicas_median']}"
            elif "self_lookup_hops_median" in info:
                notes = f"self-lookup hops {info['self_lookup_hops_median']}/{info['self_lookup_hops_max']}"
                notes += f", requester held {info['requester_held']}"
            line = f"{row['case']:<14}{row['ops']:>5}{fmt(row['success']):>9}{fmt(row['p50_ms']):>10}"
            line += f"{fmt(row['p99_ms']):>10}{fmt(row['rpcs_per_op']):>8}{fmt(row['hops_median']):>9}"
            line += f"{fmt(row['hops_max']):>9}{info['rpc_timeouts']:>5}  {notes}"
            print(line)
        print()
        for growth in document["hops_vs_log2n"]:
            print(f"N={growth['n']:<5} log2 N={growth['log2_n']:<6} median hops={fmt(growth['hops_median'])}")
        print()
    for row in document["rows"]:
        if "readable" not in row:
            continue
        info = row["detail"]
        print(f"{row['case']} ({info['processes']} x {info['nodes_per_process']} nodes, {row['values']} values)")
        print(f"  put success {row['put_success']} in {info['put_s']} s")
        for wave in info["waves"]:
            print(
                f"  wave {wave['wave']}: killed process {wave['killed_process']}, newcomers joined in "
                f"{wave['newcomer_join_s']} s; settle {wave['settle_s']} s (lookups {wave['lookup_s_max']} s, "
                f"repair {wave['repair_s_max']} s, {wave['repaired_values']} values re-sent)"
            )
        reads, replicas, extra = info["reads"], info["replicas"], info["after_extra_settle"]
        print(
            f"  readable {row['readable']} ({reads['failed_reads']} of {reads['reads']} reads failed, "
            f"p50 {reads['read_p50_ms']} ms, p99 {reads['read_p99_ms']} ms)"
        )
        print(
            f"  replicas at target {row['replicas_at_target']} (k closest holding min {replicas['closest_holding_min']}"
            f", copies min/median {replicas['copies_min']}/{replicas['copies_median']}, lost {replicas['lost']})"
        )
        print(
            f"  after one more settle ({extra['settle_s']} s, {extra['repaired_values']} re-sent): replicas at "
            f"target {extra['replicas_at_target']}, k closest holding min {extra['closest_holding_min']}"
        )
        print()


# ---- entry point -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dhtmesh across several processes: scale and churn")
    parser.add_argument("--sizes", default="50,200,500", help="mesh sizes for the scale part, comma-separated")
    parser.add_argument("--procs", type=int, default=5, help="processes for the scale part")
    parser.add_argument("--churn-nodes", type=int, default=100)
    parser.add_argument("--churn-procs", type=int, default=10)
    parser.add_argument("--churn-values", type=int, default=1000)
    parser.add_argument(
        "--quick", action="store_true", help="sizes 50,100; churn 40 nodes over 4 processes, 200 values"
    )
    parser.add_argument("--only", choices=("scale", "churn"))
    parser.add_argument("--json", help="also write the JSON document here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed-addr", help=argparse.SUPPRESS)
    parser.add_argument("--first-host", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.churn_nodes, args.churn_procs, args.churn_values = "50,100", 40, 4, 200
    return args


def main() -> int:
    args = parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    if args.worker:
        seed = None
        if args.seed_addr:
            host, port = args.seed_addr.rsplit(":", 1)
            seed = (host, int(port))
        asyncio.run(worker_main(args.nodes, args.first_host, seed))
        return 0
    from bench_proxy import emit

    host: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows: list[dict[str, Any]] = []
    status = 0
    try:
        if args.only in (None, "scale"):
            for n in [int(size) for size in args.sizes.split(",") if size.strip()]:
                (workdir / f"scale-{n}").mkdir()
                rows += bench_size(n, args.procs, args.seed, workdir)
        if args.only in (None, "churn"):
            (workdir / "churn").mkdir()
            rows.append(bench_churn(args.churn_nodes, args.churn_procs, args.churn_values, args.seed, workdir))
    except Exception as error:
        log(f"bench_scale failed: {error!r} (worker stderr in {workdir})")
        status = 1
    document = {"bench": "scale", "rows": rows, "ratios": [], "hops_vs_log2n": hops_growth(rows)}
    document |= {"host": host | {"loadavg_end": os.getloadavg()}, "workdir": str(workdir)}
    print_report(document)
    return emit(document, args.json, status)


if __name__ == "__main__":
    sys.exit(main())
