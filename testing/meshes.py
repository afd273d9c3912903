"""Nodes in this process: one node (`start_node`), a mesh of joined nodes (`Mesh`), and nodes with their
HTTP proxy (`ProxiedNodes`); real UDP sockets on loopback addresses of their own, real SQLite."""

import asyncio
from pathlib import Path

from dhtmesh.crypto import Identity
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.proxy.app import ProxyServer
from dhtmesh.testing.addresses import loopback_host

# Short periods so that background duties (sweep, repair, hand-off) happen within a test.
FAST = NodeConfig(rpc_timeout=0.25, sweep_interval=0.2, handoff_delay=0.05, subscription_ttl=6.0)


async def start_node(
    config: NodeConfig = FAST, data_dir: Path | None = None, host: str | None = None, identity: Identity | None = None
) -> DhtNode:
    """A started node with the mesh's record rules, on `host` (else a loopback address of its own) and a
    free port; it keeps its values in `data_dir` (else in memory)."""
    node = DhtNode(identity or Identity.generate(), config, data_dir, rules=RECORD_RULES)
    await node.start(host or loopback_host(), 0)
    return node


async def join_mesh(nodes: list[DhtNode]) -> None:
    """Join every node to the first, then let each look itself up: a second pass lets early joiners
    learn of later ones, as a bucket refresh would."""
    seed = nodes[0].address
    for node in nodes[1:]:
        await node.join([seed])
    await asyncio.gather(*(node.lookup(node.node_id) for node in nodes))


class Mesh:
    """Meshes of nodes in this process; `stop()` stops every node it started. `root`: where nodes
    started with `persist=True` keep their data dirs (`node0`, `node1`, ...)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.nodes: list[DhtNode] = []

    async def grow(self, count: int, config: NodeConfig = FAST, persist: bool = False) -> list[DhtNode]:
        """`count` new nodes joined to one another (not to the nodes started before)."""
        nodes = []
        for _ in range(count):
            node = await start_node(config, self._data_dir() if persist else None)
            self.nodes.append(node)  # kept at once, so that `stop` reaches it even if a later start fails
            nodes.append(node)
        await join_mesh(nodes)
        return nodes

    def _data_dir(self) -> Path:
        if self.root is None:
            raise ValueError("a Mesh without a root keeps no data dirs")
        data_dir = self.root / f"node{len(self.nodes)}"
        data_dir.mkdir()
        return data_dir

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()
        self.nodes.clear()


class ProxiedNodes:
    """Fresh nodes, each with its HTTP proxy on 127.0.0.1 and a free port; `stop()` stops them all."""

    def __init__(self) -> None:
        self._started: list[tuple[DhtNode, ProxyServer]] = []

    async def start(self, **options: object) -> tuple[DhtNode, str]:
        """A node and its proxy (`options`: the proxy's); the node and the proxy's URL."""
        node = await start_node()
        proxy = ProxyServer(node, "127.0.0.1", 0, **options)  # type: ignore[arg-type]
        self._started.append((node, proxy))
        await proxy.start()
        return node, proxy.url

    async def stop(self) -> None:
        for node, proxy in self._started:
            await proxy.stop()
            await node.stop()
        self._started.clear()
