"""The jobs benchmark (`scripts/bench_jobs.py`) runs end to end at a toy size: two worker nodes and a
non-worker, then Dask's `LocalCluster` (a task per slice, then one per batch), every result checked by
the script itself. Correctness only: no figure is judged.

Dask comes with the `bench` extra, which scripts/test installs (scripts/env.sh). In a venv without it
the dhtmesh side runs alone, the benchmark's JSON says so, and this test warns; under CI it fails."""

import os
import warnings

import pytest
from test_bench_scripts import run_bench

pytestmark = pytest.mark.bench


def test_jobs_benchmark_runs_both_systems_at_a_toy_size() -> None:
    document = run_bench(
        "bench_jobs.py", "--slices", "60", "--busy-slices", "6", "--busy-ms", "5", "--workers", "2", timeout=300.0
    )
    rows = {(row["case"], row["system"]): row for row in document["rows"]}
    systems = {system for _, system in rows}
    if "skipped" in document:
        if os.environ.get("CI"):
            pytest.fail(f"{document['skipped']}: scripts/env.sh installs it")
        warnings.warn(f"the jobs benchmark ran without its anchor: {document['skipped']}", stacklevel=1)
        assert systems == {"dhtmesh"}
    else:
        assert systems == {"dhtmesh", "dask", "dask-batched"}
    assert {case for case, _ in rows} == {"trivial", "cpu"}
    assert all(row["errors"] == 0 and row["status"] == "completed" for row in rows.values())
    assert all(row["first_result_s"] is not None and row["tail_s"] is not None for row in rows.values())
    assert rows[("cpu", "dhtmesh")]["cpu_s"] > 0
