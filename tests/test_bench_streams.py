"""The streams benchmark (`scripts/bench_streams.py`) runs end to end at a toy size: Redis streams through
a redis-server it starts, then a mesh of four `dhtmesh run` processes, a user added and logged in, entries
pushed through one node and pulled through another. Correctness only: every entry arrives once and in
order on both systems, and the report has its shape; no figure is judged."""

import pytest
from test_bench_scripts import run_bench

pytestmark = pytest.mark.bench

CASES = {"throughput", "latency"}


def test_streams_benchmark_runs_both_systems_at_a_toy_size() -> None:
    document = run_bench(
        "bench_streams.py", "--entries", "2000", "--batch", "50", "--seconds", "0.5", "--nodes", "4", timeout=300.0
    )
    rows = {(row["case"], row["system"]): row for row in document["rows"]}
    measured = {key: row for key, row in rows.items() if "quoted" not in row}
    assert set(measured) == {(case, system) for case in CASES for system in ("redis", "dhtmesh")}
    for row in measured.values():
        assert row["received"] == row["sent"] and row["lost"] == row["duplicates"] == row["out_of_order"] == 0
    assert all(rows[("throughput", system)]["entries_per_s"] > 0 for system in ("redis", "dhtmesh"))
    assert all(rows[("latency", system)]["p99_ms"] is not None for system in ("redis", "dhtmesh"))
    mesh = rows[("throughput", "dhtmesh")]["nodes"]
    assert mesh["push"] != mesh["pull"] and len(mesh["homes"]) == 3
    assert {(ratio["case"], ratio["metric"]) for ratio in document["ratios"]} >= {
        ("throughput", "entries_per_s"), ("latency 1000/s", "p50_ms"), ("latency 1000/s", "p99_ms"),
    }  # fmt: skip
    assert {(target["case"], target["metric"]) for target in document["targets"]} == {
        ("throughput", "entries_per_s"), ("latency", "p50_ms"), ("latency", "p99_ms"),
    }  # fmt: skip
