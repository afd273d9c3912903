"""`dhtmesh` as OS processes: `dhtmesh run` nodes (`ProcessGroup`, `NodeProcess`), the one reader of the
`ready node_id=... udp=... proxy=...` line a node prints once it serves (`wait_ready`; `cli/run.py`
prints it), and short CLI commands (`run_cli`). Every process is started in a session of its own and
stopped by its PID."""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dhtmesh.cli.paths import IDENTITY_FILE
from dhtmesh.crypto import Identity
from dhtmesh.crypto.identity import load_identity
from dhtmesh.node.wire.ratelimit import Address
from dhtmesh.testing.addresses import loopback_host


def _dhtmesh_command() -> list[str]:
    """The `dhtmesh` beside this Python (its venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("dhtmesh")
    return [str(beside) if beside.exists() else shutil.which("dhtmesh") or "dhtmesh"]


DHTMESH = _dhtmesh_command()
# `python -c ... SOFT HARD COMMAND...`: set the limit on open files, then become COMMAND (same PID).
_WITH_OPEN_FILES = [
    sys.executable,
    "-c",
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])));"
    " os.execv(sys.argv[3], sys.argv[3:])",
]
READY_TIMEOUT = 20.0


def wait_ready(process: subprocess.Popen, timeout: float = READY_TIMEOUT) -> dict[str, str]:
    """The fields of the `ready node_id=... udp=... proxy=...` line a node prints (text, piped stdout)
    once it serves. A node that exits or stays silent for `timeout` s is killed, and AssertionError
    says so with its stderr (if piped). The pipe is read by a thread with plain `readline`s (a `select`
    on it would miss a line already in the text wrapper's buffer) up to the `ready` line and no further,
    so what the node prints after it is left in `process.stdout` for the caller."""
    stdout = process.stdout
    assert stdout is not None
    found: queue.Queue[dict[str, str] | None] = queue.Queue(maxsize=1)
    reader = threading.Thread(target=lambda: found.put(_ready_fields(stdout)), daemon=True)
    reader.start()
    try:
        fields = found.get(timeout=timeout)
    except queue.Empty:
        fields = None
    if fields is not None:
        return fields
    process.kill()
    reader.join(timeout=5)  # the pipe ends with the process: the reader is gone before anyone reads on
    raise AssertionError(f"node did not become ready: {process.stderr.read() if process.stderr else ''}")


def _ready_fields(stdout: IO[str]) -> dict[str, str] | None:
    """The fields of the first `ready` line on `stdout`; None if the stream ends first."""
    for line in iter(stdout.readline, ""):
        if line.startswith("ready "):
            return dict(field.split("=", 1) for field in line.split()[1:])
    return None


@dataclass
class NodeProcess:
    """A `dhtmesh run` process that printed its `ready` line."""

    process: subprocess.Popen
    node_id: str
    udp: str
    url: str
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> Address:
        """The node's UDP address (and, for a farmer, its chunk streams' TCP address)."""
        host, port = self.udp.rsplit(":", 1)
        return host.strip("[]"), int(port)  # an IPv6 host is printed in brackets: [::1]:4222

    @property
    def identity(self) -> Identity:
        """The node's identity, read from its data dir (for a farmer: a registered auditor's key)."""
        return load_identity(self.data_dir / IDENTITY_FILE, None)


class ProcessGroup:
    """`dhtmesh run` processes on loopback addresses of their own with free ports, each with its own data
    dir under `root` (reused, with its address, when a name is launched again). `stop()` kills every
    one of them by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: list[subprocess.Popen] = []
        self._hosts: dict[str, str] = {}

    def launch(
        self, name: str, *extra: str, open_files: tuple[int, int] | None = None, program: list[str] = DHTMESH
    ) -> NodeProcess:
        """`open_files`: the process's (soft, hard) limit on open files, as a machine might set them;
        `program`: what takes `dhtmesh`'s arguments (a hostile variant of it: `testing.liar`)."""
        data_dir = self.root / name
        host = self._hosts.setdefault(name, loopback_host())
        args = ["run", "-p", "0", "--bind", host, "--proxyserver", "0", "--persist", str(data_dir), *extra]
        command = [*_WITH_OPEN_FILES, *map(str, open_files), *program] if open_files else program
        process = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self._started.append(process)
        ready = wait_ready(process)
        return NodeProcess(process, ready["node_id"], ready["udp"], ready["proxy"], data_dir)

    def stop(self) -> None:
        for process in self._started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()


def run_cli(*args: str, timeout: float = 30.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a short `dhtmesh` command to completion (its output captured as text)."""
    return subprocess.run(
        [*DHTMESH, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
