"""Shared fixtures: in-process meshes of real `DhtNode`s on 127.0.0.1 (real UDP sockets, real SQLite)."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from dhtmesh.crypto import Identity
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode

# Short periods so that background duties (sweep, repair, hand-off) happen within a test.
FAST = NodeConfig(rpc_timeout=0.3, sweep_interval=0.2, handoff_delay=0.05, subscription_ttl=6.0)

MeshFactory = Callable[..., Awaitable[list[DhtNode]]]


async def start_node(config: NodeConfig = FAST, data_dir: Path | None = None) -> DhtNode:
    node = DhtNode(Identity.generate(), config, data_dir)
    await node.start("127.0.0.1", 0)
    return node


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
