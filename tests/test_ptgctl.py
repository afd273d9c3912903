"""ptgctl itself (VIDA-NYU/ptgctl 632056c, the real client of ptg-api-server, kept in tests/clients) against a
mesh of real `dhtmesh run` processes: it logs in with a user made by `dhtmesh user add` (its cookie jar in
a HOME of the test's own), manages streams, uploads and reads data over REST, and pushes through one node
and pulls through another over its WebSockets, batched and acknowledged, across several streams."""

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtmesh.testing import NodeProcess, ProcessGroup, run_cli
from dhtmesh.testing.waiting import eventually

try:
    import ptgctl  # installed beside the tests (env.sh), not a dependency of ours
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs it: its absence is a failure there, not a skip
    pytest.skip("ptgctl is not installed: scripts/env.sh installs it", allow_module_level=True)

pytestmark = pytest.mark.process

USER = "bob"
PASSWORD = "ptgctl's password"
WITHIN = 30.0


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    group = ProcessGroup(tmp_path_factory.mktemp("ptgctl-mesh"))
    try:
        first = group.launch("p0")
        launched = [first] + [group.launch(f"p{i}", "-b", first.udp) for i in range(1, 3)]
        added = run_cli("user", "add", USER, "--url", first.url, env={"DHTMESH_PASSWORD": PASSWORD}, timeout=60)
        assert added.returncode == 0, added.stderr
        yield launched
    finally:
        group.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ptgctl keeps its cookie jar at ~/.ptg.cjar: a HOME of the test's own."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def logged_in(node: NodeProcess) -> "ptgctl.API":
    """ptgctl logged in through `node` (the account may take a moment to be found from every node)."""
    found: list = []

    def login() -> bool:
        api = ptgctl.API(url=node.url, username=USER, password=PASSWORD, should_log=False, should_log_ws=False)
        if api.token:
            found.append(api)
        return bool(found)

    asyncio.run(eventually(login, within=WITHIN, every=0.5))
    return found[0]


def test_ptgctl_manages_streams_and_data_over_rest(nodes: list[NodeProcess], home: Path) -> None:
    api = logged_in(nodes[1])
    assert api.ping() is True
    assert json.loads(api.streams.update("p1", desc="camera", max_len=100)) == {"desc": "camera", "max_len": 100}
    assert "p1" in api.streams.ls()
    info = api.streams.get("p1")
    assert info["sid"] == "p1" and json.loads(info["meta"])["desc"] == "camera"
    [first] = api.upload_data("p1", b"one")
    [second] = api.upload_data("p1", b"two")
    assert api.data("p1", last_entry_id="0", count=10) == [("p1", first, b"one"), ("p1", second, b"two")]
    assert api.data("p1") == [("p1", second, b"two")]  # ptg's default: the latest entry
    ids = api.upload_data(["p1", "p2"], [b"x", b"y"])  # `*`: each part's stream from its name
    assert api.data("p1+p2", last_entry_id=f"{second}+0", count=10) == [("p1", ids[0], b"x"), ("p2", ids[1], b"y")]
    assert api.streams.delete("p2") == [1, 1, 1]
    assert "p2" not in api.streams.ls()


def test_ptgctl_pushes_through_one_node_and_pulls_through_another(nodes: list[NodeProcess], home: Path) -> None:
    pusher, puller = logged_in(nodes[0]), logged_in(nodes[2])

    async def flow() -> list:
        got = []
        async with puller.data_pull_connect("c1", last_entry_id="0", ack=True) as pull:
            async with pusher.data_push_connect("c1", batch=True, ack=True) as push:
                await push.send_data([b"one", b"two22", b"three"])
            async with asyncio.timeout(WITHIN):
                for _ in range(3):  # ptg's count=1: one entry per frame pair
                    got += await pull.recv_data()
        return got

    got = asyncio.run(flow())
    assert [data for _, _, data in got] == [b"one", b"two22", b"three"]
    assert [entry_id for _, entry_id, _ in got] == sorted({entry_id for _, entry_id, _ in got}, key=_id_order)


def test_ptgctl_pushes_several_streams_and_reads_them_back(nodes: list[NodeProcess], home: Path) -> None:
    api = logged_in(nodes[1])

    async def push() -> None:
        async with api.data_push_connect("m1+m2", ack=True) as stream:  # ptgctl batches a+b itself
            await stream.send_data([b"left", b"right"], sid=["m1", "m2"])
        async with api.data_push_connect("m3") as stream:  # neither batched nor acknowledged
            await stream.send_data(b"solo")

    asyncio.run(push())
    both = api.data("m1+m2", last_entry_id="0", count=10)
    assert [(sid, data) for sid, _, data in both] == [("m1", b"left"), ("m2", b"right")]

    async def pull_solo() -> list:
        async with api.data_pull_connect("m3", last_entry_id="0", timeout=5000) as stream:
            return await stream.recv_data()

    assert [data for _, _, data in asyncio.run(pull_solo())] == [b"solo"]


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)
