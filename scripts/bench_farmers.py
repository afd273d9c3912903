#!/usr/bin/env python3
"""Farmer registry vs Storj dataserv: dhtmesh's `/api/*` routes against dataserv 2.2.13 itself, side by side in one run.

What runs (everything on 127.0.0.1, every process stopped by its process group at the end):

* dataserv 2.2.13 (PyPI) in its own venv (`build/dataserv-venv`, made on first use with the pins that make
  it run on Python 3.11: ../shared/reference/dataserv.md §3), SQLite in a temporary directory, served by
  Werkzeug's server as in the reference run. Its request authentication is switched off
  (`SKIP_AUTHENTICATION`, its own test setting): its client signs with pure-Python ECDSA at ~0.25 s a
  request, which would measure the client, and skipping the server's check only favours dataserv.
* dhtmesh: 5 `dhtmesh run` processes, the others bootstrapped from the first; requests go to the first
  one's proxy, every one signed by the farmer (Ed25519, nonce, the record in `Farmer-Record`). Signing
  happens on the client before each request's clock starts.

The same aiohttp client drives both (dhtmesh keeps connections alive; Werkzeug 0.16 answers HTTP/1.0,
so dataserv pays a TCP connect per request, on loopback). A case with errors gets no ratio.

Cases, each for N farmers, dhtmesh and dataserv one after the other:
* `register` (every farmer once), `height` (every farmer once), `ping` (within the minute: accepted, no
  effect), `online/json` (N listings): sequentially, one request at a time;
* `register conc`, `height conc`: 16 at a time, for another N farmers;
* `visible after`: seconds from one more registration's 200 until `/api/online/json` lists the farmer,
  on another node for dhtmesh (dataserv has one server; its listing is cached 30 s, and the cache was
  filled just before, as on a server that is being read).

Output: a table, then, as the very last stdout line, one JSON document
`{"bench": "farmers", "rows": [...], "ratios": [...]}` (ratios: dhtmesh / dataserv).
"""

import argparse
import asyncio
import itertools
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_proxy import Measure, free_port, report, row, run_loop, spawn, stop, terminate_on_sigterm

from dhtmesh.client import SyncClient
from dhtmesh.client.farmers import signed_headers
from dhtmesh.crypto.addresses import node_address
from dhtmesh.crypto.identity import Identity
from dhtmesh.node.records.farmer import FarmerRecord, signed_farmer_value
from dhtmesh.node.records.farmer_events import registered, with_height
from dhtmesh.node.wire.netgroup import loopback_host
from dhtmesh.testing import DHTMESH, wait_ready

HOST = "127.0.0.1"
MESH_SIZE = 5
CONCURRENCY = 16
READY_TIMEOUT = 30.0
VISIBLE_TIMEOUT = 45.0
DATASERV_PINS = [
    "dataserv==2.2.13",
    "Flask==0.10.1",
    "Werkzeug==0.16.1",
    "Jinja2==2.11.3",
    "MarkupSafe==2.0.1",
    "itsdangerous==0.24",
    "SQLAlchemy==1.3.24",
    "Flask-SQLAlchemy==2.0",
    "alembic==1.4.3",
    "Flask-Migrate==1.5.1",
    "Flask-Script==2.0.6",
    "Flask-Cache==0.13.1",
    "btctxstore==4.5.0",
    "pycoin==0.52",
    "ecdsa==0.13",
    "six==1.9.0",
    "storjcore==0.0.3",
    "pycryptodome",
    "Mako",
    "python-editor",
    "python-dateutil",
]
SERVE_DATASERV = """
import sys
from werkzeug.serving import run_simple
from dataserv.app import app
app.config["SKIP_AUTHENTICATION"] = True
run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=False)
"""

Request = Callable[[], tuple[str, dict[str, str]]]
"""Builds one request (path, headers) just before it is sent: signing is not timed."""


# ---- the two systems ------------------------------------------------------------------------------


def dataserv_python(build: Path) -> Path:
    venv = build / "dataserv-venv"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        install = [str(python), "-m", "pip", "install", "-q", "--no-deps", *DATASERV_PINS]
        done = subprocess.run(install, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"installing dataserv 2.2.13 failed: {done.stderr[-2000:]}")
        (venv / ".complete").touch()
    return python


@contextmanager
def dataserv(tmp: Path, build: Path) -> Iterator[str]:
    python = dataserv_python(build)
    package = Path(
        subprocess.check_output([str(python), "-c", "import dataserv, os; print(os.path.dirname(dataserv.__file__))"])
        .decode()
        .strip()
    )
    env = {"DATASERV_DATABASE_URI": f"sqlite:///{tmp / 'dataserv.db'}", "PATH": "/usr/bin:/bin"}
    migrate = [str(python), str(package / "app.py"), "db", "upgrade", "-d", str(package / "migrations")]
    subprocess.run(migrate, check=True, capture_output=True, cwd=tmp, env=env, timeout=120)
    (tmp / "serve_dataserv.py").write_text(SERVE_DATASERV)
    port = free_port(1)
    with (tmp / "dataserv.log").open("ab") as log:
        process = subprocess.Popen(
            [str(python), str(tmp / "serve_dataserv.py"), str(port)],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        url = f"http://{HOST}:{port}"
        wait_http(url + "/api/address")
        yield url
    finally:
        stop_all([process])


@contextmanager
def dhtmesh_mesh(tmp: Path) -> Iterator[list[str]]:
    processes: list[subprocess.Popen] = []
    try:
        urls: list[str] = []
        bootstrap: list[str] = []
        for index in range(MESH_SIZE):
            # Each node on a loopback address of its own: nodes limit how many contacts share a host.
            node_host = loopback_host(index + 1)
            args = ["run", "-p", "0", "--bind", node_host, "--proxyserver", "0", "--persist", str(tmp / f"n{index}")]
            process = spawn([*DHTMESH, *args, *bootstrap], tmp / f"n{index}.log", stdout_pipe=True)
            processes.append(process)
            ready = wait_ready(process)
            urls.append(ready["proxy"])
            bootstrap = bootstrap or ["-b", ready["udp"]]
        for url in urls:
            wait_joined(url)
        yield urls
    finally:
        stop_all(processes)


def stop_all(processes: list[subprocess.Popen]) -> None:
    """Stop every process; a second SIGTERM meanwhile must not leave the rest running."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        for process in processes:
            stop(process)
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_http(url: str) -> None:
    """Until dataserv answers at `url`."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready")
        time.sleep(0.2)


def wait_joined(url: str) -> None:
    """Until the dhtmesh node at `url` knows every other node of the mesh."""
    deadline = time.monotonic() + READY_TIMEOUT
    with SyncClient(url) as client:
        while client.info()["ipv4"]["good"] < MESH_SIZE - 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not join the mesh")
            time.sleep(0.2)


# ---- farmers, as each system wants its requests -------------------------------------------------


@dataclass
class Farmer:
    identity: Identity
    record: FarmerRecord | None = None
    seq: int = 0

    @property
    def hex(self) -> str:
        return self.identity.node_id.hex()

    @property
    def address(self) -> str:
        return node_address(self.identity.node_id)


def dataserv_request(path: str) -> Request:
    return lambda: (path, {})


def dhtmesh_request(farmer: Farmer, recipient: bytes, case: str, height: int = 0) -> Request:
    """The farmer's side: next record state, signed, and the signed request carrying it."""

    def build() -> tuple[str, dict[str, str]]:
        now = int(time.time())
        if case == "register":
            path = f"/api/register/{farmer.hex}/{farmer.address}"
            record = registered(farmer.identity.node_id, farmer.address, now)
        elif case == "height":
            assert farmer.record is not None
            path, record = f"/api/height/{farmer.hex}/{height}", with_height(farmer.record, height, now)
        else:
            path, record = f"/api/ping/{farmer.hex}", None
        signed = None
        if record is not None:
            farmer.seq += 1
            farmer.record = record
            signed = signed_farmer_value(farmer.identity, record, farmer.seq)
        return path, signed_headers(farmer.identity, path, signed, recipient)

    return build


def requests_for(system: str, farmers: list[Farmer], case: str, recipient: bytes) -> list[Request]:
    if case == "online/json":
        return [dataserv_request("/api/online/json")] * len(farmers)
    if system == "dataserv":
        paths = {
            "register": lambda f: f"/api/register/{f.address}/{f.address}",
            "height": lambda f: f"/api/height/{f.address}/{height_of(f)}",
            "ping": lambda f: f"/api/ping/{f.address}",
        }[case]
        return [dataserv_request(paths(farmer)) for farmer in farmers]
    return [dhtmesh_request(farmer, recipient, case, height_of(farmer)) for farmer in farmers]


def height_of(farmer: Farmer) -> int:
    return farmer.identity.node_id[0] + 1


# ---- measuring -------------------------------------------------------------------------------------


async def drive(url: str, requests: list[Request], workers: int) -> Measure:
    latencies: list[float] = []
    errors = 0
    order = itertools.count()
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker() -> None:
            nonlocal errors
            while (index := next(order)) < len(requests):
                path, headers = requests[index]()
                started = time.perf_counter()
                try:
                    async with session.get(url + path, headers=headers) as response:
                        await response.read()
                        errors += response.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return Measure(latencies, errors, time.perf_counter() - began)


async def seconds_until_listed(register_url: str, list_url: str, request: Request, hex_id: str, key: str) -> float:
    """Register through one URL, then poll another's /api/online/json until the farmer is listed."""
    async with aiohttp.ClientSession() as session:
        async with session.get(list_url + "/api/online/json") as response:
            await response.read()  # dataserv: the listing is now cached, as it is on a busy server
        path, headers = request()
        async with session.get(register_url + path, headers=headers) as response:
            if response.status != 200:
                return float("nan")
        registered_at = time.perf_counter()
        while time.perf_counter() - registered_at < VISIBLE_TIMEOUT:
            async with session.get(list_url + "/api/online/json") as response:
                listing = await response.json(content_type=None)
            if any(farmer.get(key) == hex_id for farmer in listing.get("farmers", [])):
                return time.perf_counter() - registered_at
            await asyncio.sleep(0.05)
    return float("nan")


CASES = (
    ("register", 1),
    ("height", 1),
    ("ping", 1),
    ("online/json", 1),
    ("register", CONCURRENCY),
    ("height", CONCURRENCY),
)


def node_id_at(url: str) -> bytes:
    """The id of the node behind a proxy: part of what a farmer signs."""
    with SyncClient(url) as client:
        return client.node_id()


async def bench(dataserv_url: str, dhtmesh_urls: list[str], recipient: bytes, count: int, doc: dict[str, Any]) -> None:
    urls = {"dataserv": dataserv_url, "dhtmesh": dhtmesh_urls[0]}
    for url in urls.values():  # warm-up: dhtmesh opens its registry view, dataserv fills its cache
        await drive(url, [dataserv_request("/api/online/json")] * 3, 1)
    sequential = [Farmer(Identity.generate()) for _ in range(count)]
    concurrent = [Farmer(Identity.generate()) for _ in range(count)]
    for case, workers in CASES:
        farmers = sequential if workers == 1 else concurrent
        name = case if workers == 1 else f"{case} conc"
        for system in ("dhtmesh", "dataserv"):
            # Each system gets its own copies: the dhtmesh client keeps its farmers' record state.
            group = farmers if system == "dhtmesh" else [Farmer(f.identity) for f in farmers]
            measure = await drive(urls[system], requests_for(system, group, case, recipient), workers)
            doc["rows"].append(row(name, system, measure))
            print(f"{name:<14} {system:<8} {doc['rows'][-1]}", flush=True)
    late = Farmer(Identity.generate())
    visible = {
        "dhtmesh": await seconds_until_listed(
            dhtmesh_urls[0], dhtmesh_urls[-1], dhtmesh_request(late, recipient, "register"), late.hex, "nodeid"
        ),
        "dataserv": await seconds_until_listed(
            dataserv_url,
            dataserv_url,
            dataserv_request(f"/api/register/{late.address}/{late.address}"),
            late.address,
            "btc_addr",
        ),
    }
    for system, seconds in visible.items():
        doc["rows"].append({"case": "visible after", "system": system, "seconds": round(seconds, 3)})
    doc["ratios"] = ratios(doc["rows"])


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["case"], r["system"]): r for r in rows}
    result = []
    for (case, system), mine in by.items():
        anchor = by.get((case, "dataserv"))
        if system != "dhtmesh" or anchor is None or mine.get("errors") or anchor.get("errors"):
            continue
        for metric in ("ops_per_s", "p99_ms", "seconds"):
            if metric in mine and anchor.get(metric):
                ratio = round(mine[metric] / anchor[metric], 3)
                result.append(
                    {"case": case, "metric": metric, "dhtmesh": mine[metric], "anchor": anchor[metric], "ratio": ratio}
                )
    return result


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'case':<14} {'system':<8} {'n':>5} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'seconds':>8}")
    for r in rows:
        print(
            f"{r['case']:<14} {r['system']:<8} {r.get('requests', ''):>5} {r.get('ops_per_s', ''):>8} "
            f"{r.get('p50_ms', ''):>8} {r.get('p99_ms', ''):>8} {r.get('errors', ''):>6} {r.get('seconds', ''):>8}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--farmers", type=int, default=300, help="farmers per case (default 300)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 farmers")
    parser.add_argument("--build", default="build", help="where the dataserv venv lives (default build/)")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document to PATH")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    count = 20 if args.quick else max(1, args.farmers)
    terminate_on_sigterm()
    doc: dict[str, Any] = {"bench": "farmers", "farmers": count, "mesh": MESH_SIZE, "rows": [], "ratios": []}

    def work() -> None:
        build = Path(args.build).resolve()
        build.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bench_farmers-") as tmp:
            with dataserv(Path(tmp), build) as dataserv_url, dhtmesh_mesh(Path(tmp)) as dhtmesh_urls:
                run_loop(bench(dataserv_url, dhtmesh_urls, node_id_at(dhtmesh_urls[0]), count, doc))
        print_table(doc["rows"])

    return report("bench_farmers", doc, args.json, work)


if __name__ == "__main__":
    sys.exit(main())
