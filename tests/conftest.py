"""Shared fixtures, thin wrappers over the kit (`dhtmesh.testing`): in-process meshes of real `DhtNode`s
on loopback (real UDP sockets, real SQLite), a node with its proxy in process, and real `dhtmesh run`
processes; and the test kinds (markers).

Every test is of one kind: `bench` (runs the benchmark scripts, or soaks a mesh of a benchmark's size
for tens of seconds), `process` (starts `dhtmesh run`, the CLI, `dhtnode` or another OS process), `unit`
(everything else: in this process, quick). A test or module says `bench` or `process` itself, but a test
that uses `spawn` is a `process` test without saying so; a test that says nothing is a `unit` test.
`pytest -m unit` runs the quick ones alone.
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dhtmesh.node.dht import DhtNode
from dhtmesh.testing import Mesh, NodeProcess, ProcessGroup, ProxiedNodes

KINDS = ("unit", "process", "bench")

MeshFactory = Callable[..., Awaitable[list[DhtNode]]]
Serve = Callable[..., Awaitable[tuple[DhtNode, str]]]


@pytest.fixture
async def make_mesh(tmp_path: Path) -> AsyncIterator[MeshFactory]:
    """`await make_mesh(n, config=..., persist=False)`: n joined nodes (`Mesh.grow`), stopped at the end."""
    mesh = Mesh(tmp_path)
    yield mesh.grow
    await mesh.stop()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`await serve(**proxy_options)`: a fresh node with its proxy on a free port; yields (node, url)."""
    nodes = ProxiedNodes()
    yield nodes.start
    await nodes.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """`spawn(name, *extra_args)`: a `dhtmesh run` process (see `ProcessGroup`), stopped by PID at the end."""
    group = ProcessGroup(tmp_path)
    yield group.launch
    group.stop()


@pytest.fixture
def lone(spawn: Callable[..., NodeProcess]) -> NodeProcess:
    """A `dhtmesh run` node of its own, whose per-host budgets a test may drain."""
    return spawn("lone")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its kind (see the module docstring)."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS):
            continue
        item.add_marker("process" if "spawn" in item.fixturenames else "unit")
