"""Shared fixtures: in-process meshes of real `DhtNode`s on 127.0.0.1 (real UDP sockets, real SQLite),
a node with its proxy in process, and real `dhtmesh run` processes; and the test kinds (markers).

Every test is of one kind: `bench` (runs the benchmark scripts, or soaks a mesh of a benchmark's size
for tens of seconds), `process` (starts `dhtmesh run`, the CLI, `dhtnode` or another OS process), `unit`
(everything else: in this process, quick). A test or module says `bench` or `process` itself, but a test
that uses `spawn` is a `process` test without saying so; a test that says nothing is a `unit` test.
`pytest -m unit` runs the quick ones alone.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode
from dhtmesh.proxy.app import ProxyServer

from support import FAST, NodeProcess, ProcessGroup, start_node

KINDS = ("unit", "process", "bench")

MeshFactory = Callable[..., Awaitable[list[DhtNode]]]
Serve = Callable[..., Awaitable[tuple[DhtNode, str]]]


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
async def serve() -> AsyncIterator[Serve]:
    """`await serve(**proxy_options)`: a fresh node with its proxy on a free port; yields (node, url)."""
    started: list[tuple[DhtNode, ProxyServer]] = []

    async def start(**options: object) -> tuple[DhtNode, str]:
        node = await start_node()
        proxy = ProxyServer(node, "127.0.0.1", 0, **options)  # type: ignore[arg-type]
        await proxy.start()
        started.append((node, proxy))
        return node, proxy.url

    yield start
    for node, proxy in started:
        await proxy.stop()
        await node.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """`spawn(name, *extra_args)`: a `dhtmesh run` process (see `ProcessGroup`), stopped by PID at the end."""
    group = ProcessGroup(tmp_path)
    yield group.launch
    group.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its kind (see the module docstring)."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS):
            continue
        item.add_marker("process" if "spawn" in item.fixturenames else "unit")
