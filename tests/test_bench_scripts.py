"""The benchmarks in `scripts/` run end to end at toy sizes: they drive the same node internals the tests
do, so a change there must not leave them broken until the next full benchmark run. Correctness only:
every op succeeds, every value stays readable; no figure is judged here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_bench(script: str, *args: str, timeout: float = 180.0) -> dict:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dht_benchmark_runs_both_systems_at_a_toy_size() -> None:
    document = run_bench("bench_dht.py", "--sizes", "8", "--ops", "10")
    systems = {row["system"] for row in document["rows"]}
    assert systems == {"dhtmesh", "kademlia"}
    assert all(row["success"] == 1.0 for row in document["rows"])
    assert any(row["case"] == "N=8 put" and row["ratio"] is not None for row in document["ratios"])


def test_scale_and_churn_benchmark_runs_at_a_toy_size() -> None:
    document = run_bench(
        "bench_scale.py", "--sizes", "10", "--procs", "2", "--churn-nodes", "12", "--churn-procs", "3",
        "--churn-values", "30",
    )  # fmt: skip
    scale = [row for row in document["rows"] if row["case"].startswith("N=")]
    (churn,) = [row for row in document["rows"] if row["case"].startswith("churn")]
    assert scale and all(row["success"] == 1.0 for row in scale)
    assert churn["put_success"] == 1.0
    assert churn["readable"] == 1.0
    assert churn["detail"]["after_extra_settle"]["lost"] == 0


def test_farmer_benchmark_runs_both_systems_at_a_toy_size() -> None:
    """Builds dataserv 2.2.13's venv under build/ on first use (pinned, from the package registry)."""
    document = run_bench("bench_farmers.py", "--farmers", "5", timeout=600.0)
    rows = {(row["case"], row["system"]): row for row in document["rows"]}
    assert {system for _, system in rows} == {"dhtmesh", "dataserv"}
    assert all(row.get("errors", 0) == 0 for row in rows.values())
    assert rows[("visible after", "dhtmesh")]["seconds"] < rows[("visible after", "dataserv")]["seconds"]
