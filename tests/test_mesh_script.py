"""scripts/mesh: starts real nodes, checks them, stops them all by PID, and refuses bad arguments."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

MESH = Path(__file__).resolve().parent.parent / "scripts" / "mesh"


def run_mesh(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, str(MESH), *args], capture_output=True, text=True, timeout=120, env=env)


def test_a_mesh_of_processes_serves_a_value_everywhere_and_stops() -> None:
    result = run_mesh("4", "--run-for", "0.5", "--check")
    assert result.returncode == 0, result.stderr
    urls = [line.split()[3] for line in result.stdout.splitlines() if line.startswith("node ")]
    assert len(urls) == 4
    assert "every node returns it" in result.stdout and "mesh stopped" in result.stdout
    pids = subprocess.run(["pgrep", "-f", "dhtmesh-mesh-"], capture_output=True, text=True).stdout.split()
    assert pids == [], "every node process was stopped"


def test_bad_arguments_are_refused() -> None:
    for args in (["0"], ["abc"], ["5000"]):
        result = run_mesh(*args)
        assert result.returncode == 2 and "error" in result.stderr
