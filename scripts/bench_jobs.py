#!/usr/bin/env python3
"""Jobs on the mesh vs Dask: the same slices through dhtmesh's worker nodes and through a Dask
`LocalCluster`, side by side in one run (issue 16).

What runs (everything on loopback; every process stopped by its PID at the end):

* dhtmesh: `--workers` (4) `dhtmesh run --worker --sandboxes 1` processes and a fifth node without
  `--worker`, all bootstrapped from that fifth one, each on a loopback address of its own. The owner
  (a fresh identity) deploys each job through the fifth node with `dhtmesh.client.Client.deploy_job`,
  closes it, follows its results with `listen_results` and then polls `job_status` every 10 ms until it
  says `completed`.
* Dask: `distributed.LocalCluster(n_workers=4, threads_per_worker=1, processes=True)` on 127.0.0.1 (no
  dashboard), `client.map(f, data, pure=False)` then `client.gather`; the functions are the Python
  equivalents of the JavaScript ones. Skipped, and said so in the JSON, when `distributed` is not
  installed (`pip install '.[bench]'`; scripts/bench installs it).
* `dask-batched`: the same cluster, one task per batch of the batches a dhtmesh owner cuts the job into
  (`node/jobs/owner.cut`, about 32 of them), as a sandbox runs a batch in one call: how much
  of the difference is the batching rather than the system.

The two systems run one after the other, each alone: an idle Dask cluster uses 13 % of a core (its
heartbeats and profiler; an idle mesh 0.4 %, measured), which would fall on dhtmesh's figures if both
were up together. Each is warmed up first with a small job that is not timed (first connections,
imports, compiles).

Cases:
* `trivial`: `--slices` (10,000) slices of `x => x * 2` over 0..N-1: slices/s from the deploy call
  (Dask: `map`) until the job is `completed` (Dask: `gather` returned).
* `cpu`: `--busy-slices` (200) CPU-bound slices of about `--busy-ms` (50) ms each: a loop of a fixed
  number of steps, calibrated per engine before anything starts (V8 through mini-racer, CPython), so
  that a slice is the same work however many processes share the cores. (A loop until `Date.now()`
  passes a deadline would take 50 ms of wall time however little CPU it got, so with 4 sandboxes on 2
  cores it would "compute" twice as fast as the cores allow.) Wall time against the ideal, the slices'
  total CPU time / cores: `efficiency` = ideal / wall. The total is what each system reports (dhtmesh:
  the status's `totalCPUTime`; Dask: its task stream's compute times); both measure time spent inside
  the slice, which grows when processes share a core, so `cal_efficiency` uses the calibrated total
  instead (slices x one slice's CPU time on an idle core): 1.0 is every core busy with slices only.
  The calibration times V8 once it has optimized the loop; a sandbox runs a new job's function slower
  until V8 has (its first slices took up to 62 ms instead of 50, measured alone), which dhtmesh pays.
* In all, the CPU time every process of the run used during the (timed) job, per slice: the client's
  and the nodes' with their sandboxes, or the client's with Dask's scheduler (the same process) and its
  workers; read from /proc for this process and every process under it, so the other work of the
  machine is not in it. That other work is measured too (`others_cpu_s`: the machine's busy time
  meanwhile, less ours): wall times of a case it took CPU from are not to be compared. For dhtmesh, also
  the slices its workers started (`started`, from their counters): a slice computed twice (two workers
  that took a batch at once, a lease that lapsed) counts twice.
* In both, the latency from the deploy call to the first result the client sees, and the tail: from
  the last result the client sees until the job is `completed` (Dask has no job state: there it is
  from the last future done until `gather` returned). Dask's are seen through done callbacks, which
  slow it down, so they come from a second pass of the same work; its slices/s from the first, plain one.

Every result is checked (`2 * x`; `x` for the CPU-bound slices) on both sides; a missing or wrong one is
an error and such a case gets no ratio.

Output: a table, then, as the very last stdout line, one JSON document
`{"bench": "jobs", "rows": [...], "ratios": [...]}` (ratios: dhtmesh / Dask).
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench_common import percentile, rounded
from bench_farmers import stop_all
from bench_proxy import report, run_loop, spawn, terminate_on_sigterm

from dhtmesh.client import Client, SyncClient
from dhtmesh.crypto.identity import Identity
from dhtmesh.node.jobs.owner import cut
from dhtmesh.node.records.job import canonical
from dhtmesh.node.wire.netgroup import loopback_host
from dhtmesh.testing import DHTMESH, wait_ready

TRIVIAL_JS = "x => x * 2"
# Fixed work, `n` steps (calibrated), the same for every datum: with `i * x` in the loop, products past
# 2^31 made V8 leave integer arithmetic and take 1.3-7x longer for some data (measured). The sum is
# used, so that V8 cannot drop the loop.
BUSY_JS = "(x, n) => { let s = 0; for (let i = 0; i < n; i++) s = (s + i) % 1000003; return s >= 0 ? x : -1; }"
FIRST_SLICE = 1  # dcp-rest numbers slices from 1
STARTED = "jobs.slices_started"  # a worker's counter, in /node/info
FINISHED = {"completed", "failed", "cancelled"}
STATUS_POLL = 0.01  # seconds between two status reads once every result is in
JOB_TIMEOUT = 900.0  # seconds a job may take before the case fails
ANSWER_TIMEOUT = 300.0  # seconds a plain answer may take: a 10,000-slice deploy is one request
JOIN_TIMEOUT = 30.0
CALLBACK_TIMEOUT = 30.0  # seconds Dask's callback thread may lag behind `gather`


def double(x: int) -> int:
    """`TRIVIAL_JS` in Python."""
    return x * 2


def busy(x: int, n: int) -> int:
    """`BUSY_JS` in Python."""
    s = 0
    for i in range(n):
        s = (s + i) % 1000003
    return x if s >= 0 else -1


def in_batch(function: Callable[..., int], data: list[int], **kwargs: int) -> list[int]:
    """One Dask task over a whole batch, as a sandbox runs a batch in one call into V8."""
    return [function(x, **kwargs) for x in data]


@dataclass(frozen=True)
class Case:
    name: str
    slices: int
    js: str
    python: Callable[..., int]
    expect: Callable[[int], int]
    steps: dict[str, int] = field(default_factory=dict)  # the loop's steps per engine ("js", "python")
    slice_cpu_s: dict[str, float] = field(default_factory=dict)  # one slice on an idle core, per engine


WARM_UP = Case("warm-up", 8, TRIVIAL_JS, double, double)


@dataclass
class Timeline:
    """What the client saw of one job, in seconds from the deploy call (Dask: `map`)."""

    arrivals: list[float] = field(default_factory=list)  # each result as the client saw it
    done: float = 0.0  # the job completed (Dask: `gather` returned)
    cpu_s: float | None = None  # the slices' total time as the system reports it
    errors: int = 0  # results missing or wrong
    status: str = "completed"
    watched_done: float | None = None  # Dask: the arrivals are a second pass's, which ended then
    cpu_used_s: float = 0.0  # CPU time of this process and every process under it during the job
    others_cpu_s: float = 0.0  # CPU time the rest of the machine used meanwhile: how noisy the figures are
    started: int | None = None  # dhtmesh: slices the workers started, a slice computed twice counted twice

    def measured(self, before: "CpuSnapshot") -> None:
        now = CpuSnapshot.now()
        self.cpu_used_s = now.ours - before.ours
        self.others_cpu_s = max(0.0, now.machine - before.machine - self.cpu_used_s)


@dataclass(frozen=True)
class CpuSnapshot:
    ours: float  # `tree_cpu_s()`
    machine: float  # every core's busy time (/proc/stat), everyone's

    @classmethod
    def now(cls) -> "CpuSnapshot":
        return cls(tree_cpu_s(), machine_busy_s())


def machine_busy_s() -> float:
    """The time every core of the machine has spent busy (not idle nor waiting on I/O) since boot."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    guest = sum(ticks[8:10])  # already counted in user and nice
    return (sum(ticks) - idle - iowait - guest) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s() -> float:
    """The CPU time (user + system) so far of this process and every live process under it: the
    client, and the nodes with their sandboxes, or Dask's scheduler and workers."""
    parents: dict[int, int] = {}
    spent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command, which may hold spaces
            pid = int(stat.parent.name)
            parents[pid], spent[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(spent.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


# ---- calibration ------------------------------------------------------------------------------------


def calibrated(run: Callable[[int], object], target_s: float) -> tuple[int, float]:
    """The steps that make `run(steps)` take about `target_s` of CPU, and the median CPU time of five runs
    of it (before any node or worker starts, so nothing else uses the core)."""
    steps = 1000
    while (spent := cpu_time_of(run, steps)) < target_s / 10:
        steps *= 10
    for _ in range(3):  # V8 compiles the loop better as it runs it: rescale on what it takes once warm
        steps = max(1, round(steps * target_s / spent))
        spent = percentile([cpu_time_of(run, steps) for _ in range(5)], 50) or target_s
    return steps, spent


def cpu_time_of(run: Callable[[int], object], steps: int) -> float:
    began = time.process_time()
    run(steps)
    return time.process_time() - began


def calibrate(case: Case, target_s: float) -> Case:
    from py_mini_racer import MiniRacer  # the V8 the sandboxes run; a dependency of dhtmesh

    context = MiniRacer()
    context.eval(f"var work = {case.js};")
    js_steps, js_s = calibrated(lambda steps: context.call("work", 1, steps), target_s)
    py_steps, py_s = calibrated(lambda steps: case.python(1, steps), target_s)
    return replace(case, steps={"js": js_steps, "python": py_steps}, slice_cpu_s={"js": js_s, "python": py_s})


# ---- dhtmesh ----------------------------------------------------------------------------------------


@contextmanager
def dhtmesh_mesh(tmp: Path, workers: int) -> Iterator[list[str]]:
    """A non-worker node and `workers` worker nodes bootstrapped from it; their proxy URLs, the
    non-worker's first."""
    processes: list[subprocess.Popen] = []
    try:
        bootstrap: list[str] = []
        urls: list[str] = []
        for index in range(workers + 1):
            # Each node on a loopback address of its own: nodes limit how many contacts share a host.
            args = ["run", "-p", "0", "--bind", loopback_host(index + 1), "--proxyserver", "0"]
            args += ["--persist", str(tmp / f"n{index}"), *bootstrap]
            args += ["--worker", "--sandboxes", "1"] if index else []
            process = spawn([*DHTMESH, *args], tmp / f"n{index}.log", stdout_pipe=True)
            processes.append(process)
            ready = wait_ready(process)
            urls.append(ready["proxy"])
            bootstrap = bootstrap or ["-b", ready["udp"]]
        wait_joined(urls)
        yield urls
    finally:
        stop_all(processes)


def wait_joined(urls: list[str]) -> None:
    """Until every node knows every other one."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    for url in urls:
        with SyncClient(url) as client:
            while client.info()["ipv4"]["good"] < len(urls) - 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not join the mesh")
                time.sleep(0.2)


async def dhtmesh_job(client: Client, owner: Identity, case: Case) -> Timeline:
    """Deploy and close the job, follow its results, then read its status until it is finished."""
    args = [case.steps["js"]] if case.steps else []
    timeline = Timeline()
    results: dict[int, Any] = {}
    before = CpuSnapshot.now()
    async with asyncio.timeout(JOB_TIMEOUT):
        began = time.perf_counter()
        job_id = await client.deploy_job(owner, case.js, range(case.slices), args=args)
        async with asyncio.TaskGroup() as group:
            # Followed from the deploy on, so that the first result's time is when it could be seen.
            following = group.create_task(follow(client, job_id, case.slices, results, timeline, began))
            await client.close_job(owner, job_id)
            await following
        status = await client.job_status(job_id)
        while status.get("status") not in FINISHED:
            await asyncio.sleep(STATUS_POLL)
            status = await client.job_status(job_id)
        timeline.done = time.perf_counter() - began
    timeline.measured(before)
    timeline.status, timeline.cpu_s = status["status"], status.get("totalCPUTime")
    if len(results) < case.slices:  # the stream ended early: read the rest, to check every one
        answer = await client.job_results(job_id)
        results |= {entry["sliceNumber"]: entry["value"] for entry in answer.get("results", [])}
    expected = {index + FIRST_SLICE: case.expect(index) for index in range(case.slices)}
    timeline.errors = sum(results.get(number) != value for number, value in expected.items())
    return timeline


async def follow(
    client: Client, job_id: str, total: int, results: dict[int, Any], timeline: Timeline, began: float
) -> None:
    """Record each result as the listen stream brings it, until all are in or the stream ends."""
    async for entry in client.listen_results(job_id):
        if entry["sliceNumber"] not in results:
            timeline.arrivals.append(time.perf_counter() - began)
        results[entry["sliceNumber"]] = entry["value"]
        if len(results) >= total:
            return


def run_dhtmesh(urls: list[str], owner: Identity, case: Case) -> Timeline:
    """One job through the first node of `urls`, on an event loop of its own; with the slices the
    others (the workers) started meanwhile, which counts a slice computed twice twice."""
    timelines: list[Timeline] = []

    async def run() -> None:
        async with Client(urls[0], timeout=ANSWER_TIMEOUT) as client:
            before = await slices_started(urls[1:])
            timelines.append(await dhtmesh_job(client, owner, case))
            timelines[0].started = await slices_started(urls[1:]) - before

    run_loop(run())
    return timelines[0]


async def slices_started(workers: list[str]) -> int:
    """How many slices the workers have started so far, by their counters."""
    total = 0
    for url in workers:
        async with Client(url) as client:
            total += (await client.info())["counters"].get(STARTED, 0)
    return total


# ---- Dask -------------------------------------------------------------------------------------------


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def dask_cluster(workers: int) -> Iterator[Any]:
    """A client of a `LocalCluster` of `workers` worker processes (one thread each) on 127.0.0.1."""
    from distributed import Client as DaskClient
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    pids: list[int] = []
    try:
        with DaskClient(cluster) as client:
            pids = list(client.run(os.getpid).values())
            yield client
    finally:
        cluster.close()
        stop_pids(pids)


def dask_case(client: Any, case: Case, batched: bool) -> Timeline:
    """The case as the brief has it, one task per slice, or `batched`: one task per batch of those a
    dhtmesh owner cuts the job into, to tell how much of the difference is the batching. Two passes: a
    plain `map` and `gather`, timed; then the same work watched, for the latencies and the CPU time.
    Watching costs Dask time (10,000 done callbacks took 13 % off its slices/s, measured), which the
    first pass does not pay."""
    timed = dask_job(client, case, batched)
    watched = dask_job(client, case, batched, watch=True)
    return Timeline(
        watched.arrivals,
        timed.done,
        watched.cpu_s,
        timed.errors + watched.errors,
        watched_done=watched.done,
        cpu_used_s=timed.cpu_used_s,
        others_cpu_s=timed.others_cpu_s,
    )


def dask_job(client: Any, case: Case, batched: bool = False, watch: bool = False) -> Timeline:
    """`map` then `gather`. Watched: each future's completion is seen through a callback (run on Dask's
    callback thread, so it is waited for after `gather`), and the compute times are read from the task
    stream."""
    from distributed import get_task_stream

    timeline = Timeline()
    kwargs = {"n": case.steps["python"]} if case.steps else {}
    batches = dhtmesh_batches(case.slices) if batched else [[x] for x in range(case.slices)]
    before = CpuSnapshot.now()
    with get_task_stream(client) if watch else nullcontext() as stream:
        began = time.perf_counter()
        if batched:
            futures = client.map(in_batch, [case.python] * len(batches), batches, pure=False, **kwargs)
        else:
            futures = client.map(case.python, range(case.slices), pure=False, **kwargs)
        for future, batch in zip(futures if watch else (), batches, strict=False):
            future.add_done_callback(arrived(timeline, began, len(batch)))
        gathered = client.gather(futures)
        timeline.done = time.perf_counter() - began
    timeline.measured(before)
    values = [value for batch in gathered for value in batch] if batched else gathered
    deadline = time.monotonic() + CALLBACK_TIMEOUT
    while watch and len(timeline.arrivals) < case.slices and time.monotonic() < deadline:
        time.sleep(0.001)
    timeline.arrivals.sort()  # the callbacks ran in no promised order
    if stream is not None:
        timeline.cpu_s = sum(
            span["stop"] - span["start"]
            for task in stream.data
            for span in task["startstops"]
            if span["action"] == "compute"
        )
    timeline.errors = sum(value != case.expect(index) for index, value in enumerate(values))
    return timeline


def arrived(timeline: Timeline, began: float, results: int) -> Callable[[object], None]:
    """A done callback: `results` results arrived now."""
    return lambda _: timeline.arrivals.extend([time.perf_counter() - began] * results)


def dhtmesh_batches(slices: int) -> list[list[int]]:
    """The data 0..slices-1 in the batches a dhtmesh owner cuts them into."""
    sizes = [len(batch) for batch in cut([canonical(x) for x in range(slices)])]
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    return [list(range(start, start + size)) for start, size in zip(starts, sizes, strict=True)]


def stop_pids(pids: list[int]) -> None:
    """Kill by PID any Dask worker process that `close` left behind."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, 9)


# ---- figures ----------------------------------------------------------------------------------------


def row(case: Case, system: str, timeline: Timeline, cores: int) -> dict[str, Any]:
    last = max(timeline.arrivals, default=None)
    figures: dict[str, Any] = {
        "case": case.name,
        "system": system,
        "slices": case.slices,
        "status": timeline.status,
        "errors": timeline.errors,
        "seconds": rounded(timeline.done, 3),
        "slices_per_s": rounded(case.slices / timeline.done if timeline.done else None, 1),
        "first_result_s": rounded(min(timeline.arrivals, default=None), 3),
        "half_results_s": rounded(percentile(timeline.arrivals, 50), 3),
        "last_result_s": rounded(last, 3),
        "tail_s": rounded(None if last is None else (timeline.watched_done or timeline.done) - last, 3),
        "cpu_used_s": rounded(timeline.cpu_used_s, 2),
        "cpu_ms_per_slice": rounded(timeline.cpu_used_s * 1000 / case.slices, 3),
        "others_cpu_s": rounded(timeline.others_cpu_s, 2),
        "started": timeline.started,
    }
    if case.steps:
        engine = "js" if system == "dhtmesh" else "python"
        calibrated_s = case.slices * case.slice_cpu_s[engine]
        figures |= {
            "slice_cpu_ms": rounded(case.slice_cpu_s[engine] * 1000, 1),
            "cpu_s": rounded(timeline.cpu_s, 3),
            "ideal_s": rounded(timeline.cpu_s / cores if timeline.cpu_s else None, 3),
            "efficiency": rounded(timeline.cpu_s / cores / timeline.done if timeline.cpu_s else None, 3),
            "cal_ideal_s": rounded(calibrated_s / cores, 3),
            "cal_efficiency": rounded(calibrated_s / cores / timeline.done, 3),
        }
    return figures


RATIO_METRICS = (
    "slices_per_s",
    "first_result_s",
    "tail_s",
    "seconds",
    "efficiency",
    "cal_efficiency",
    "cpu_ms_per_slice",
)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """dhtmesh / Dask per case and metric; against the batched Dask too, as case "CASE vs batched"."""
    by = {(r["case"], r["system"]): r for r in rows}
    result = []
    for (case, system), mine in by.items():
        for anchor_system, name in (("dask", case), ("dask-batched", f"{case} vs batched")):
            anchor = by.get((case, anchor_system))
            if system != "dhtmesh" or anchor is None or mine["errors"] or anchor["errors"]:
                continue
            for metric in RATIO_METRICS:
                if mine.get(metric) is not None and anchor.get(metric):
                    ratio = round(mine[metric] / anchor[metric], 3)
                    result.append(
                        {
                            "case": name,
                            "metric": metric,
                            "dhtmesh": mine[metric],
                            "anchor": anchor[metric],
                            "ratio": ratio,
                        }
                    )
    return result


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = (
        ("case", 8), ("system", 12), ("slices", 7), ("started", 7), ("errors", 6), ("seconds", 8),
        ("slices_per_s", 12), ("first_result_s", 14), ("last_result_s", 13), ("tail_s", 7),
        ("cpu_ms_per_slice", 16), ("cpu_s", 7), ("ideal_s", 8), ("efficiency", 10), ("cal_ideal_s", 11),
        ("cal_efficiency", 14), ("others_cpu_s", 12),
    )  # fmt: skip
    print(" ".join(f"{name:>{width}}" for name, width in columns))
    for r in rows:
        print(" ".join(f"{_cell(r.get(name)):>{width}}" for name, width in columns))


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


# ---- the run ----------------------------------------------------------------------------------------


Record = Callable[[Case, str, Timeline], None]
"""Takes a case's timeline on a system as soon as it is measured."""


def dhtmesh_runs(cases: list[Case], workers: int, record: Record) -> None:
    """Each case on a mesh of `workers` worker nodes, after a warm-up job."""
    with tempfile.TemporaryDirectory(prefix="bench_jobs-") as tmp, dhtmesh_mesh(Path(tmp), workers) as urls:
        owner = Identity.generate()
        if run_dhtmesh(urls, owner, WARM_UP).errors:
            raise RuntimeError("the warm-up job's results are wrong")
        for case in cases:
            record(case, "dhtmesh", run_dhtmesh(urls, owner, case))


def dask_runs(cases: list[Case], workers: int, record: Record) -> None:
    """Each case on a cluster of `workers` Dask workers, a task per slice then per batch, after a warm-up."""
    with dask_cluster(workers) as client:
        if dask_job(client, WARM_UP).errors:
            raise RuntimeError("the warm-up job's results are wrong")
        for case in cases:
            record(case, "dask", dask_case(client, case, batched=False))
            record(case, "dask-batched", dask_case(client, case, batched=True))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=10_000, help="trivial slices (default 10,000)")
    parser.add_argument("--busy-slices", type=int, default=200, help="CPU-bound slices (default 200)")
    parser.add_argument("--busy-ms", type=float, default=50.0, help="CPU time of one CPU-bound slice (default 50)")
    parser.add_argument("--workers", type=int, default=4, help="worker nodes, and Dask workers (default 4)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 trivial and 40 CPU-bound slices")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document to PATH")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    trivial, busy_slices = (1000, 40) if args.quick else (max(1, args.slices), max(1, args.busy_slices))
    cores = os.cpu_count() or 1
    doc: dict[str, Any] = {"bench": "jobs", "workers": args.workers, "cores": cores, "rows": [], "ratios": []}
    with_dask = dask_available()
    if not with_dask:
        doc["skipped"] = "Dask: distributed is not installed (pip install '.[bench]')"
    terminate_on_sigterm()

    def work() -> None:
        cases = [
            Case("trivial", trivial, TRIVIAL_JS, double, double),
            calibrate(Case("cpu", busy_slices, BUSY_JS, busy, lambda x: x), args.busy_ms / 1000),
        ]
        doc["busy_steps"] = cases[1].steps

        def record(case: Case, system: str, timeline: Timeline) -> None:
            doc["rows"].append(row(case, system, timeline, cores))
            print(f"{case.name:<8} {system:<12} {doc['rows'][-1]}", flush=True)

        dhtmesh_runs(cases, args.workers, record)
        if with_dask:
            dask_runs(cases, args.workers, record)
        doc["ratios"] = ratios(doc["rows"])
        print_table(doc["rows"])
        if any(r["errors"] or r["status"] != "completed" for r in doc["rows"]):
            raise RuntimeError("some results were missing or wrong")

    return report("bench_jobs", doc, args.json, work)


if __name__ == "__main__":
    sys.exit(main())
