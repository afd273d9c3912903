#!/usr/bin/env python3
"""Cost: what one dhtmesh node costs at rest, and what a put and a get cost on the wire.

(a) Memory and idle CPU of a `dhtmesh run` process. Two `dhtmesh run` processes on 127.0.0.1 form a
    network (the second bootstraps from the first); the first is measured. Once joined (GET / reports
    `ipv4.good > 0`), its VmRSS (/proc/PID/status) and idle CPU over a quiet window (default 10 s; utime +
    stime deltas from /proc/PID/stat, as % of one core) are taken holding 0 values; then --values values
    (default 10,000; 100 random bytes each, one per fresh key) are put through its proxy by 16 concurrent
    clients, and RSS and idle CPU are taken again. The peer, which holds the replicas, is measured too.
    The median latency of `GET /` (live node info) is recorded at both points.

(b) Datagrams and bytes per put and per get. 20 in-process `DhtNode`s (NodeConfig defaults, in-memory
    stores) on 127.0.0.1 form a mesh in one asyncio process; every node's `transport.sendto` is wrapped to
    count datagrams and bytes (requests and replies, all nodes). 100 puts, each from a random node to a fresh
    key, then 100 gets of those keys, each from a random node made to forget its own copy of that key first.
    Per op: mean datagrams and bytes, and the largest datagram seen. The same is measured for the stock
    `kademlia` 2.2.3 package (20 `kademlia.network.Server`s, same wrapping; the reader's copy is dropped from
    its storage before the get), when it is installed. The traffic the mesh makes while idle is reported too.

Output: a table, then, as the very last stdout line, one JSON document `{"bench": "cost", "rows": [...],
"ratios": [...]}` (ratios: dhtmesh / kademlia for datagrams and bytes per op).
"""

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_proxy import Network, drive, report, rss_mib, run_loop, start_dhtmesh, stop

from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.values.value import Value, new_value_id
from dhtmesh.testing import Mesh, eventually

HOST = "127.0.0.1"
MESH_SIZE = 20
WIRE_OPS = 100
VALUE_BYTES = 100
PUT_CONCURRENCY = 16
IDLE_WINDOW = 10.0
JOIN_TIMEOUT = 20.0
SETTLE = 2.0  # seconds for background duties (hand-off, admission) to finish before a measurement
# A node hands values off to each newly admitted contact in turn, `handoff_delay` apart: after a mesh forms,
# those hand-offs trail on for about (MESH_SIZE - 1) * handoff_delay seconds. Measure only after that.
MESH_SETTLE = (MESH_SIZE - 1) * NodeConfig().handoff_delay + SETTLE
INFO_SAMPLES = 200
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---- (a) one process at rest ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def idle_cpu_percent(pids: list[int], window: float) -> list[float]:
    """CPU each process used over `window` seconds of wall time, as % of one core."""
    before = [cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    await asyncio.sleep(window)
    elapsed = time.monotonic() - started
    return [round((cpu_seconds(pid) - used) / elapsed * 100, 2) for pid, used in zip(pids, before, strict=True)]


async def node_info(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + "/") as response:
        return json.loads(await response.read())


async def joined(url: str) -> bool:
    """Whether the node at `url` knows a good contact (not yet, if its proxy does not answer yet)."""
    with contextlib.suppress(aiohttp.ClientError, ValueError):
        return (await node_info(url)).get("ipv4", {}).get("good", 0) > 0
    return False


async def info_p50_ms(url: str) -> float:
    measure = await drive(url, [("GET", "/", None)] * INFO_SAMPLES, 1)
    return round(statistics.median(measure.latencies) * 1000, 3)


async def put_values(url: str, count: int) -> dict[str, Any]:
    """Put `count` values of VALUE_BYTES random bytes, each under a fresh key, PUT_CONCURRENCY at a time."""
    requests = []
    for index in range(count):
        body = json.dumps({"data": base64.b64encode(os.urandom(VALUE_BYTES)).decode(), "type": 0}).encode()
        requests.append(("POST", f"/key/{hashlib.sha1(f'cost-{index}'.encode()).hexdigest()}", body))
    measure = await drive(url, requests, PUT_CONCURRENCY)
    return {"puts": count, "errors": measure.errors, "seconds": round(measure.elapsed, 2)}


async def rest_rows(net: Network, case: str, window: float) -> list[dict[str, Any]]:
    pids = [net.proxy_pid, net.processes[1].pid]
    await asyncio.sleep(SETTLE)
    info_ms = await info_p50_ms(net.url)
    cpu = await idle_cpu_percent(pids, window)
    info = await node_info(net.url)
    return [
        {
            "case": f"{case}{suffix}",
            "system": "dhtmesh",
            "rss_mib": rss_mib(pid),
            "cpu_percent": share,
            "stored_values": info["storage_values"] if suffix == "" else None,
            "info_p50_ms": info_ms if suffix == "" else None,
        }
        for pid, share, suffix in zip(pids, cpu, ("", " (peer)"), strict=True)
    ]


async def measure_rest(net: Network, values: int, window: float, doc: dict[str, Any]) -> None:
    await eventually(lambda: joined(net.url), within=JOIN_TIMEOUT, every=0.2)  # the two nodes joined
    doc["rows"] += await rest_rows(net, "idle, 0 values", window)
    doc["put_load"] = await put_values(net.url, values)
    log(f"put {values} values: {doc['put_load']}")
    doc["rows"] += await rest_rows(net, f"idle, {values} values", window)


def measure_process(values: int, window: float, doc: dict[str, Any]) -> None:
    net = Network("dhtmesh")
    with tempfile.TemporaryDirectory(prefix="bench_cost-") as tmp:
        try:
            start_dhtmesh(net, Path(tmp))
            run_loop(measure_rest(net, values, window, doc))
        finally:
            for process in net.processes:
                stop(process)


# ---- (b) the wire --------------------------------------------------------------------------------


@dataclass
class Traffic:
    datagrams: int = 0
    bytes: int = 0
    largest: int = 0

    def count(self, data: bytes) -> None:
        self.datagrams += 1
        self.bytes += len(data)
        self.largest = max(self.largest, len(data))


def wrap_sendto(transports: list[Any], traffic: Traffic) -> None:
    """Count every datagram the transports send (a per-instance override of `sendto`)."""
    for transport in transports:
        original = transport.sendto

        def sendto(data: bytes, addr: Any = None, *, _original: Callable = original) -> None:
            traffic.count(data)
            _original(data, addr)

        transport.sendto = sendto


@dataclass
class OpCost:
    datagrams: list[int]
    bytes: list[int]
    failures: int = 0

    def row(self, case: str, system: str, largest: int) -> dict[str, Any]:
        return {
            "case": case,
            "system": system,
            "ops": len(self.datagrams),
            "datagrams_per_op": round(statistics.mean(self.datagrams), 2),
            "datagrams_min": min(self.datagrams),
            "datagrams_max": max(self.datagrams),
            "bytes_per_op": round(statistics.mean(self.bytes), 1),
            "max_datagram": largest,
            "failures": self.failures,
        }


async def per_op(traffic: Traffic, ops: list[Callable[[], Any]]) -> OpCost:
    """Run `ops` one after another; the traffic each one made. An op returning False counts as a failure."""
    cost = OpCost([], [])
    for op in ops:
        datagrams, sent = traffic.datagrams, traffic.bytes
        if await op() is False:
            cost.failures += 1
        cost.datagrams.append(traffic.datagrams - datagrams)
        cost.bytes.append(traffic.bytes - sent)
    return cost


async def idle_rate(traffic: Traffic, seconds: float) -> float:
    datagrams = traffic.datagrams
    await asyncio.sleep(seconds)
    return round((traffic.datagrams - datagrams) / seconds, 2)


def wire_rows(system: str, traffic: Traffic, puts: OpCost, gets: OpCost, idle: float) -> list[dict[str, Any]]:
    largest = traffic.largest
    rows = [puts.row("put", system, largest), gets.row("get", system, largest)]
    rows.append({"case": "idle mesh", "system": system, "datagrams_per_s": idle, "nodes": MESH_SIZE})
    return rows


def wire_keys(count: int) -> list[str]:
    return [f"wire-{index}" for index in range(count)]


# dhtmesh


def forget(node: DhtNode, key: bytes) -> None:
    """Make `node` drop its own copy of `key`'s values, so that a get from it must use the mesh."""
    node.forget_key(key)


async def dhtmesh_wire(ops: int, rng: random.Random) -> list[dict[str, Any]]:
    mesh = Mesh()  # production settings, each node on a loopback address of its own
    try:
        nodes = await mesh.grow(MESH_SIZE, NodeConfig())
        await asyncio.sleep(MESH_SETTLE)
        traffic = Traffic()
        wrap_sendto([node.transport for node in nodes], traffic)
        idle = await idle_rate(traffic, SETTLE)
        keys = [hashlib.sha1(name.encode()).digest() for name in wire_keys(ops)]
        replicas: list[int] = []

        async def put(key: bytes) -> bool:
            value = Value(id=new_value_id(), data=os.urandom(VALUE_BYTES))
            result = await rng.choice(nodes).put(key, value)
            replicas.append(result.replicas)
            return result.replicas > 0

        async def get(key: bytes) -> bool:
            reader = rng.choice(nodes)
            forget(reader, key)
            return len(await reader.get(key)) == 1

        puts = await per_op(traffic, [lambda key=key: put(key) for key in keys])
        gets = await per_op(traffic, [lambda key=key: get(key) for key in keys])
        rows = wire_rows("dhtmesh", traffic, puts, gets, idle)
        rows[0]["mean_replicas"] = round(statistics.mean(replicas), 2)
        return rows
    finally:
        await mesh.stop()


# stock kademlia


async def kademlia_wire(ops: int, rng: random.Random) -> list[dict[str, Any]]:
    from kademlia.network import Server
    from kademlia.utils import digest

    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    servers: list[Any] = []
    try:
        for _ in range(MESH_SIZE):
            server = Server(ksize=20, alpha=3)
            servers.append(server)
            await server.listen(0, interface=HOST)
        seed = servers[0].transport.get_extra_info("sockname")[:2]
        for server in servers[1:]:
            await server.bootstrap([seed])
        await asyncio.gather(*(server.bootstrap([seed]) for server in servers[1:]))  # learn late joiners
        await asyncio.sleep(SETTLE)
        traffic = Traffic()
        wrap_sendto([server.transport for server in servers], traffic)
        idle = await idle_rate(traffic, SETTLE)

        async def put(key: str) -> bool:
            return bool(await rng.choice(servers).set(key, os.urandom(VALUE_BYTES)))

        async def get(key: str) -> bool:
            reader = rng.choice(servers)
            reader.storage.data.pop(digest(key), None)
            return await reader.get(key) is not None

        keys = wire_keys(ops)
        puts = await per_op(traffic, [lambda key=key: put(key) for key in keys])
        gets = await per_op(traffic, [lambda key=key: get(key) for key in keys])
        return wire_rows("kademlia", traffic, puts, gets, idle)
    finally:
        for server in servers:
            server.stop()
        await asyncio.sleep(0.1)  # let the transports close


def kademlia_installed() -> bool:
    try:
        import kademlia.network  # noqa: F401
    except ImportError:
        return False
    return True


async def measure_wire(ops: int, doc: dict[str, Any]) -> None:
    rng = random.Random(42)
    doc["rows"] += await dhtmesh_wire(ops, rng)
    log("dhtmesh wire cost measured")
    if kademlia_installed():
        doc["rows"] += await kademlia_wire(ops, rng)
        log("kademlia wire cost measured")
    else:
        doc["skipped"] = "kademlia not installed"


# ---- report --------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench_cost] {message}", file=sys.stderr, flush=True)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["case"], r["system"]): r for r in rows}
    result = []
    for case in ("put", "get"):
        mine, anchor = by.get((case, "dhtmesh")), by.get((case, "kademlia"))
        if mine is None or anchor is None:
            continue
        for metric in ("datagrams_per_op", "bytes_per_op", "max_datagram"):
            ratio = round(mine[metric] / anchor[metric], 3) if anchor[metric] else None
            result.append(
                {"case": case, "metric": metric, "dhtmesh": mine[metric], "anchor": anchor[metric], "ratio": ratio}
            )
    return result


def print_tables(rows: list[dict[str, Any]]) -> None:
    print(f"{'case':<26} {'system':<9} {'RSS MiB':>8} {'CPU %':>7} {'values':>7} {'GET / p50 ms':>12}")
    for r in (r for r in rows if "rss_mib" in r):
        values = "" if r["stored_values"] is None else r["stored_values"]
        info = "" if r["info_p50_ms"] is None else f"{r['info_p50_ms']:.2f}"
        rss = "-" if r["rss_mib"] is None else f"{r['rss_mib']:.1f}"
        print(f"{r['case']:<26} {r['system']:<9} {rss:>8} {r['cpu_percent']:>7.2f} {values:>7} {info:>12}")
    print()
    print(
        f"{'case':<10} {'system':<9} {'ops':>4} {'datagrams/op':>13} {'(min-max)':>10} {'bytes/op':>10}"
        f" {'max datagram':>13} {'fail':>5}"
    )
    for r in (r for r in rows if "datagrams_per_op" in r):
        spread = f"{r['datagrams_min']}-{r['datagrams_max']}"
        print(
            f"{r['case']:<10} {r['system']:<9} {r['ops']:>4} {r['datagrams_per_op']:>13.2f}"
            f" {spread:>10}"
            f" {r['bytes_per_op']:>10.1f} {r['max_datagram']:>13} {r['failures']:>5}"
        )
    for r in (r for r in rows if r["case"] == "idle mesh"):
        print(f"idle mesh  {r['system']:<9} {r['datagrams_per_s']} datagrams/s over {r['nodes']} nodes")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=10000, help="values put before the second idle measurement")
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 values, 3 s windows, 20 wire ops")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document to PATH")
    return parser.parse_args()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that every `finally` (stopping processes and nodes) runs."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    args = parse_args()
    values, window, ops = (500, 3.0, 20) if args.quick else (max(0, args.values), IDLE_WINDOW, WIRE_OPS)
    doc: dict[str, Any] = {"bench": "cost", "values": values, "idle_window_s": window, "rows": [], "ratios": []}

    def work() -> None:
        with sigterm_as_exit():
            measure_process(values, window, doc)
            run_loop(measure_wire(ops, doc), use_uvloop=False)  # uvloop transports' sendto cannot be wrapped
        doc["ratios"] = ratios(doc["rows"])
        print_tables(doc["rows"])

    return report("bench_cost", doc, args.json, work)


if __name__ == "__main__":
    sys.exit(main())
