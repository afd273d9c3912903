#!/usr/bin/env python3
"""Proxy vs OpenDHT: the HTTP proxy of dhtmesh against OpenDHT's `dhtnode` proxy, side by side in one run.

What runs (everything on 127.0.0.1, every process stopped by its process group at the end):

* dhtmesh: two `dhtmesh run` processes (`-p 0 --bind 127.0.0.1 --proxyserver PORT --proxy-addr 127.0.0.1
  --persist TMP`), the second bootstrapped from the first; the first one's proxy is measured.
* OpenDHT: two `dhtnode -s` processes (`-p UDP --proxyserver PORT --proxy-addr 127.0.0.1`, the second with
  `-b 127.0.0.1:UDP`), as in the reference notes (§2, §4); the first one's proxy is measured.

The same aiohttp client code drives both. Before timing, 1000 keys get one value each (not timed). Then, per
case, dhtmesh and OpenDHT are measured one after the other (interleaved, so machine noise hits both):

* `POST /key/{h}` ×N, each to a fresh key, value `{"data": base64(100 random bytes), "type": 0}`;
* `GET /key/{h}` ×N over the 1000 stored keys (the whole chunked body is read);
* `GET /` ×N (node info);

first sequentially over one keep-alive connection ("seq"), then with 16 concurrent workers ("conc").
Per case and system: ops/s (all requests / wall time), p50, p99 and max latency in ms, errors (non-200
replies, timeouts and connection errors), and the VmRSS of each measured proxy process after the run.

Output: a table, then, as the very last stdout line, one JSON document
`{"bench": "proxy", "rows": [...], "ratios": [...]}` (ratios: dhtmesh / OpenDHT for ops/s and p99).
"""

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_common import percentile

from dhtmesh.testing import DHTMESH, wait_ready

HOST = "127.0.0.1"
CONCURRENCY = 16
STORED_KEYS = 1000
SETUP_CONCURRENCY = 8
WARMUP_REQUESTS = 10
REQUEST_TIMEOUT = 15.0  # seconds per request; a timeout counts as an error
CASE_BUDGET = 240.0  # seconds per case and system; requests not started by then are not made
DHTNODE_SETTLE = 12.0  # dhtnode refreshes its cached node info 3 s after start, then every 2 min
STOP_TIMEOUT = 10.0
VALUE_BYTES = 100
SYSTEMS = ("dhtmesh", "opendht")
CASES = ("POST", "GET", "GET /")
JSON_HEADERS = {"Content-Type": "application/json"}


# ---- processes -----------------------------------------------------------------------------------


@dataclass
class Network:
    """One 2-node network: its processes (first = the measured proxy node) and the proxy URL."""

    system: str
    processes: list[subprocess.Popen] = field(default_factory=list)
    url: str = ""

    @property
    def proxy_pid(self) -> int:
        return self.processes[0].pid


def free_port(kind: int) -> int:
    """A port free for `kind` (SOCK_STREAM/SOCK_DGRAM) on every IPv4 and IPv6 address (dhtnode binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("0.0.0.0", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET6, kind) as probe6:
                probe6.bind(("::", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


def spawn(args: list[str], log: Path, stdout_pipe: bool = False) -> subprocess.Popen:
    """Start `args` in its own session (so its whole group can be stopped), output to `log`."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else sink,
            stderr=sink,
            text=stdout_pipe,  # a piped stdout is read as lines of text (`wait_ready`)
            start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it has not exited in time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
    if process.stdout is not None:
        process.stdout.close()


def start_dhtmesh(network: Network, tmp: Path) -> None:
    bootstrap: list[str] = []
    for index in range(2):
        data_dir = tmp / f"dhtmesh{index}"
        proxy_port = free_port(socket.SOCK_STREAM)
        args = [*DHTMESH, "run", "-p", "0", "--bind", HOST, "--proxyserver", str(proxy_port)]
        args += ["--proxy-addr", HOST, "--persist", str(data_dir), *bootstrap]
        process = spawn(args, tmp / f"dhtmesh{index}.log", stdout_pipe=True)
        network.processes.append(process)
        ready = wait_ready(process)
        if index == 0:
            network.url = ready["proxy"]
            bootstrap = ["-b", ready["udp"]]


def start_dhtnode(network: Network, tmp: Path, dhtnode: str) -> None:
    first_udp = free_port(socket.SOCK_DGRAM)
    proxy_port = free_port(socket.SOCK_STREAM)
    first = [dhtnode, "-s", "-p", str(first_udp), "--proxyserver", str(proxy_port), "--proxy-addr", HOST]
    network.processes.append(spawn(first, tmp / "dhtnode0.log"))
    network.url = f"http://{HOST}:{proxy_port}"
    second = [dhtnode, "-s", "-p", str(free_port(socket.SOCK_DGRAM)), "-b", f"{HOST}:{first_udp}"]
    network.processes.append(spawn(second, tmp / "dhtnode1.log"))


def rss_mib(pid: int) -> float | None:
    """VmRSS of `pid` in MiB, from /proc/PID/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


@contextlib.contextmanager
def networks(tmp: Path, dhtnode: str | None) -> Iterator[list[Network]]:
    """Start both 2-node networks (OpenDHT's only if dhtnode is installed); always stop what was started."""
    started = [Network("dhtmesh")] + ([Network("opendht")] if dhtnode else [])
    try:
        start_dhtmesh(started[0], tmp)
        if dhtnode:
            start_dhtnode(started[1], tmp, dhtnode)
        yield started
    finally:
        for network in started:
            for process in network.processes:
                stop(process)


# ---- the client ----------------------------------------------------------------------------------


Request = tuple[str, str, bytes | None]  # method, path, body


@dataclass
class Measure:
    latencies: list[float]
    errors: int
    elapsed: float


def value_body() -> bytes:
    data = base64.b64encode(os.urandom(VALUE_BYTES)).decode()
    return json.dumps({"data": data, "type": 0}).encode()


def key_hex(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def session_for(workers: int) -> aiohttp.ClientSession:
    """At most `workers` keep-alive connections (1: one connection, requests strictly one after another)."""
    connector = aiohttp.TCPConnector(limit=workers, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))


async def one_request(session: aiohttp.ClientSession, url: str, request: Request) -> bool:
    method, path, body = request
    try:
        async with session.request(method, url + path, data=body, headers=JSON_HEADERS) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def drive(url: str, requests: list[Request], workers: int) -> Measure:
    """Send `requests` with `workers` concurrent workers over as many keep-alive connections."""
    latencies: list[float] = []
    errors = 0
    order = itertools.count()
    async with session_for(workers) as session:
        for _ in range(WARMUP_REQUESTS):
            await one_request(session, url, ("GET", "/", None))
        deadline = time.monotonic() + CASE_BUDGET

        async def worker() -> None:
            nonlocal errors
            while (index := next(order)) < len(requests) and time.monotonic() < deadline:
                started = time.perf_counter()
                ok = await one_request(session, url, requests[index])
                latencies.append(time.perf_counter() - started)
                errors += not ok

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return Measure(latencies, errors, time.perf_counter() - began)


def case_requests(case: str, count: int, tag: str) -> list[Request]:
    if case == "POST":
        return [("POST", f"/key/{key_hex(f'post-{tag}-{i}')}", value_body()) for i in range(count)]
    if case == "GET":
        return [("GET", f"/key/{key_hex(f'stored-{i % STORED_KEYS}')}", None) for i in range(count)]
    return [("GET", "/", None) for _ in range(count)]


async def store_keys(url: str) -> int:
    """Put one value under each of the stored keys (not timed); returns how many puts failed."""
    puts = [("POST", f"/key/{key_hex(f'stored-{i}')}", value_body()) for i in range(STORED_KEYS)]
    return (await drive(url, puts, SETUP_CONCURRENCY)).errors


async def wait_dhtnode(url: str) -> dict[str, Any]:
    """Wait until dhtnode's proxy answers GET / with ipv4.good > 0, or DHTNODE_SETTLE seconds pass."""
    info: dict[str, Any] = {}
    deadline = time.monotonic() + DHTNODE_SETTLE
    async with session_for(1) as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(url + "/") as response:
                    if response.status == 200:
                        info = json.loads(await response.read())
                        if info.get("ipv4", {}).get("good", 0) > 0:
                            return info
            await asyncio.sleep(0.25)
    return info


# ---- figures -------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> float:
    """A latency in ms for the table (NaN when no request finished)."""
    return round(seconds * 1000, 3) if seconds is not None else float("nan")


def row(case: str, system: str, measure: Measure) -> dict[str, Any]:
    done = measure.latencies
    return {
        "case": case,
        "system": system,
        "requests": len(done),
        "ops_per_s": round(len(done) / measure.elapsed, 1) if measure.elapsed > 0 else 0.0,
        "p50_ms": _ms(percentile(done, 50)),
        "p99_ms": _ms(percentile(done, 99)),
        "max_ms": _ms(max(done, default=None)),
        "errors": measure.errors,
        "rss_mib": None,
    }


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """dhtmesh / OpenDHT for ops/s and p99, per case."""
    by = {(r["case"], r["system"]): r for r in rows}
    result = []
    for (case, system), mine in by.items():
        anchor = by.get((case, "opendht"))
        if system != "dhtmesh" or anchor is None:
            continue
        for metric in ("ops_per_s", "p99_ms"):
            ratio = mine[metric] / anchor[metric] if anchor[metric] else None
            result.append(
                {
                    "case": case,
                    "metric": metric,
                    "dhtmesh": mine[metric],
                    "anchor": anchor[metric],
                    "ratio": round(ratio, 3) if ratio is not None else None,
                }
            )
    return result


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'case':<12} {'system':<8} {'n':>6} {'ops/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"
    print(header + f" {'errors':>6} {'RSS MiB':>8}")
    print("-" * (len(header) + 16))
    for r in rows:
        rss = f"{r['rss_mib']:>8.1f}" if r["rss_mib"] is not None else f"{'-':>8}"
        print(
            f"{r['case']:<12} {r['system']:<8} {r['requests']:>6} {r['ops_per_s']:>9.1f} {r['p50_ms']:>9.2f}"
            f" {r['p99_ms']:>9.2f} {r['max_ms']:>9.1f} {r['errors']:>6} {rss}"
        )


# ---- the run -------------------------------------------------------------------------------------


async def run_cases(nets: list[Network], count: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for mode, workers in (("seq", 1), ("conc", CONCURRENCY)):
        for case in CASES:
            for net in nets:
                measure = await drive(net.url, case_requests(case, count, f"{mode}-{net.system}"), workers)
                rows.append(row(f"{case} {mode}", net.system, measure))
                log(f"{case} {mode} {net.system}: {rows[-1]['ops_per_s']} ops/s, {measure.errors} errors")
    return rows


async def bench(nets: list[Network], count: int, doc: dict[str, Any]) -> None:
    def log(message: str) -> None:
        print(f"[bench_proxy] {message}", file=sys.stderr, flush=True)

    for net in nets:
        if net.system == "opendht":
            info = await wait_dhtnode(net.url)
            doc["opendht_good"] = info.get("ipv4", {}).get("good", 0)
        doc.setdefault("setup_errors", {})[net.system] = await store_keys(net.url)
        log(f"{net.system}: {STORED_KEYS} keys stored at {net.url}")
    doc["rows"] = await run_cases(nets, count, log)
    for net in nets:
        doc.setdefault("rss_mib", {})[net.system] = {
            "proxy": rss_mib(net.proxy_pid),
            "peer": rss_mib(net.processes[1].pid),
        }
    for r in doc["rows"]:
        r["rss_mib"] = doc["rss_mib"][r["system"]]["proxy"]
    doc["ratios"] = ratios(doc["rows"])


async def _cancel_on_sigterm(main: Coroutine[Any, Any, None]) -> None:
    """Run `main`; a SIGTERM cancels it (in the loop, so that every `finally` on the way out runs)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await main
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)  # removing the loop's handler left SIG_DFL


def run_loop(main: Coroutine[Any, Any, None], use_uvloop: bool = True) -> None:
    """Run `main` to completion (on uvloop when asked and available); SIGTERM raises SystemExit(143)."""
    runner = asyncio.Runner()
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        try:
            runner.run(_cancel_on_sigterm(main))
        except asyncio.CancelledError:
            raise SystemExit(128 + signal.SIGTERM) from None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per case and system (default 2000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 requests per case")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document to PATH")
    return parser.parse_args()


def terminate_on_sigterm() -> None:
    """Outside the event loop, turn SIGTERM into SystemExit so that every `finally` (stopping processes) runs."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> int:
    args = parse_args()
    count = 200 if args.quick else max(1, args.requests)
    terminate_on_sigterm()
    dhtnode = shutil.which("dhtnode")
    doc: dict[str, Any] = {"bench": "proxy", "requests": count, "concurrency": CONCURRENCY, "rows": [], "ratios": []}
    if dhtnode is None:
        doc["skipped"] = "dhtnode not installed"

    def work() -> None:
        with tempfile.TemporaryDirectory(prefix="bench_proxy-") as tmp, networks(Path(tmp), dhtnode) as nets:
            run_loop(bench(nets, count, doc))
        print_table(doc["rows"])

    return report("bench_proxy", doc, args.json, work)


def report(name: str, doc: dict[str, Any], json_path: str | None, work: Callable[[], None]) -> int:
    """Run `work`, which fills `doc`, then `emit` the document whatever happened: a failure is recorded
    in it (`error`), said on stderr with its traceback, and makes the exit status 1."""
    try:
        work()
    except BaseException as error:  # the JSON line must be printed whatever happened, even on SIGTERM
        doc["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()  # where it failed, for whoever reads the log
        print(f"{name}: error: {doc['error']}", file=sys.stderr)
        return emit(doc, json_path, 1)
    return emit(doc, json_path, 0)


def emit(doc: dict[str, Any], json_path: str | None, status: int) -> int:
    """Print the result document as the last line of output (scripts/bench reads it), and write it to
    `json_path` when given; return the exit status."""
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
