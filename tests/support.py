"""Helpers shared by the tests: fast node settings, in-process nodes, and `dhtmesh` processes."""

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from dhtmesh.crypto import Identity
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.wire.ratelimit import Address

# Short periods so that background duties (sweep, repair, hand-off) happen within a test.
FAST = NodeConfig(rpc_timeout=0.3, sweep_interval=0.2, handoff_delay=0.05, subscription_ttl=6.0)


async def start_node(config: NodeConfig = FAST, data_dir: Path | None = None) -> DhtNode:
    node = DhtNode(Identity.generate(), config, data_dir)
    await node.start("127.0.0.1", 0)
    return node


DHTMESH = [str(Path(sys.executable).with_name("dhtmesh"))]
READY_TIMEOUT = 20.0


@dataclass
class NodeProcess:
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
        return host, int(port)


class ProcessGroup:
    """`dhtmesh run` processes on 127.0.0.1 with free ports, each with its own data dir under `root`
    (reused when a name is launched again). `stop()` kills every one of them by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: list[subprocess.Popen] = []

    def launch(self, name: str, *extra: str) -> NodeProcess:
        data_dir = self.root / name
        args = ["run", "-p", "0", "--bind", "127.0.0.1", "--proxyserver", "0", "--persist", str(data_dir), *extra]
        process = subprocess.Popen(
            [*DHTMESH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
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


async def get_json(url: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return response.status, await response.json(content_type=None)


def run_cli(*args: str, timeout: float = 30.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a short `dhtmesh` command to completion."""
    return subprocess.run(
        [*DHTMESH, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def wait_ready(process: subprocess.Popen) -> dict[str, str]:
    """Read the `ready node_id=... udp=... proxy=...` line a node prints once it serves."""
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.2)
        if readable:
            line = process.stdout.readline()
            if line.startswith("ready "):
                return dict(field.split("=", 1) for field in line.split()[1:])
            if not line and process.poll() is not None:
                break
    process.kill()
    raise AssertionError(f"node did not become ready: {process.stderr.read() if process.stderr else ''}")


@contextlib.contextmanager
def watch_datagrams(nodes: Iterable[DhtNode]) -> Iterator[list[tuple[Address, bytes]]]:
    """Record `(destination, datagram)` for everything the nodes send while the block runs."""
    sent: list[tuple[Address, bytes]] = []
    transports = []
    for node in nodes:
        transport = node.endpoint.transport
        assert transport is not None
        original = transport.sendto

        def sendto(data: bytes, addr: Any = None, *, _original: Callable = original) -> None:
            sent.append((addr, bytes(data)))
            _original(data, addr)

        transport.sendto = sendto  # type: ignore[method-assign]
        transports.append(transport)
    try:
        yield sent
    finally:
        for transport in transports:
            del transport.sendto  # the class's own method again
