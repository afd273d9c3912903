"""Shared fixtures: in-process meshes of real `DhtNode`s on 127.0.0.1 (real UDP sockets, real SQLite),
and real `dhtmesh run` processes."""

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode

from support import DHTMESH, FAST, NodeProcess, start_node, wait_ready

MeshFactory = Callable[..., Awaitable[list[DhtNode]]]


@pytest.fixture
async def make_mesh(tmp_path: Path) -> AsyncIterator[MeshFactory]:
    """`await make_mesh(n, config=..., persist=False)`: n joined nodes, stopped at the end of the test."""
    started: list[DhtNode] = []

    async def make(count: int, config: NodeConfig = FAST, persist: bool = False) -> list[DhtNode]:
        nodes = []
        for index in range(count):
            data_dir = tmp_path / f"node{len(started) + index}" if persist else None
            if data_dir:
                data_dir.mkdir()
            nodes.append(await start_node(config, data_dir))
        started.extend(nodes)
        seed = nodes[0].address
        for node in nodes[1:]:
            await node.join([seed])
        # A second pass lets early joiners learn of later ones, as a bucket refresh would.
        await asyncio.gather(*(node.lookup(node.node_id) for node in nodes))
        return nodes

    yield make
    for node in started:
        await node.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """`spawn(name, *extra_args)`: a `dhtmesh run` process on 127.0.0.1 with free ports and its own
    data dir (reused when the same name is spawned again). Every process is stopped by PID at the end."""
    started: list[subprocess.Popen] = []

    def launch(name: str, *extra: str) -> NodeProcess:
        data_dir = tmp_path / name
        args = ["run", "-p", "0", "--bind", "127.0.0.1", "--proxyserver", "0", "--persist", str(data_dir), *extra]
        process = subprocess.Popen(
            [*DHTMESH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        started.append(process)
        ready = wait_ready(process)
        return NodeProcess(process, ready["node_id"], ready["udp"], ready["proxy"], data_dir)

    yield launch
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
