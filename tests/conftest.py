"""Shared fixtures: in-process meshes of real `DhtNode`s on 127.0.0.1 (real UDP sockets, real SQLite),
and real `dhtmesh run` processes."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode

from support import FAST, NodeProcess, ProcessGroup, start_node

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
    """`spawn(name, *extra_args)`: a `dhtmesh run` process (see `ProcessGroup`), stopped by PID at the end."""
    group = ProcessGroup(tmp_path)
    yield group.launch
    group.stop()
