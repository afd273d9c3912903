"""Background work is never silent: loops run under the supervisor (a loop that raises is logged at ERROR,
counted in `GET /node/info` and restarted), dropped listener events are counted, a node's services are
built once (one farmer registry), and a bootstrap address the node's socket cannot reach is refused or
skipped with one clear line."""

import ast
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from dhtmesh.crypto import Identity
from dhtmesh.node import listeners
from dhtmesh.node.records.farmer import DIRECTORY_KEYS
from dhtmesh.node.services import Farming, Services
from dhtmesh.node.stats import Counters
from dhtmesh.node.storage.chunks import ChunkStore
from dhtmesh.node.tasks import Supervisor, TaskSet
from dhtmesh.node.transfer.chunk_client import ChunkClient, HolderRefused, new_challenge
from dhtmesh.node.transfer.chunk_service import NOT_AUDITOR
from dhtmesh.node.values.value import Value
from dhtmesh.proxy.app import ProxyServer
from dhtmesh.testing import NodeProcess, eventually, loopback_host, run_cli, start_node

from support import assert_one_line_error, get_json

PACKAGE = Path(__file__).resolve().parent.parent


async def test_a_loop_that_raises_is_logged_at_error_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    supervisor = Supervisor(counters, min_backoff=0.01, max_backoff=0.02)
    runs = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"failure {len(runs)}")
        await asyncio.Event().wait()  # the third run keeps going

    with caplog.at_level(logging.ERROR, logger="dhtmesh.node.tasks"):
        supervisor.start("flaky", flaky)
        await eventually(lambda: len(runs) == 3)
    await supervisor.close()
    assert counters.get("loops_failed") == 2
    assert counters.get("loop_failed.flaky") == 2
    failures = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert [str(record.exc_info[1]) for record in failures if record.exc_info] == ["failure 1", "failure 2"]
    assert all("flaky" in record.getMessage() for record in failures)
    assert len(supervisor) == 0  # closed: nothing left running


async def test_a_short_job_that_fails_is_logged_at_error_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    jobs = TaskSet(counters)

    async def job() -> None:
        raise RuntimeError("lost")

    with caplog.at_level(logging.ERROR, logger="dhtmesh.node.tasks"):
        await asyncio.gather(jobs.spawn(job()), return_exceptions=True)
        await eventually(lambda: counters.get("tasks_failed") == 1)
    assert [str(record.exc_info[1]) for record in caplog.records if record.exc_info] == ["lost"]
    assert len(jobs) == 0


async def test_a_failed_loop_of_a_node_is_counted_in_its_node_info() -> None:
    node = await start_node()
    proxy = ProxyServer(node, "127.0.0.1", 0)
    await proxy.start()
    try:
        failed = asyncio.Event()

        async def broken() -> None:
            failed.set()
            raise ValueError("socket family mismatch")

        node.loops.start("broken", broken)
        await failed.wait()
        await eventually(lambda: node.counters.get("loop_failed.broken") >= 1)
        status, info = await get_json(proxy.url, "/node/info")
        assert status == 200
        assert info["counters"]["loop_failed.broken"] >= 1
        assert info["counters"]["loops_failed"] >= 1
    finally:
        await proxy.stop()
        await node.stop()


async def test_events_a_listener_has_no_room_for_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listeners, "MAX_QUEUED_EVENTS", 2)  # a slow consumer, without 10,000 puts
    node = await start_node()
    proxy = ProxyServer(node, "127.0.0.1", 0)
    await proxy.start()
    try:
        key = os.urandom(20)
        with node.listen(key):  # never read
            for index in range(5):
                await node.put(key, Value(index + 1, b"event %d" % index))
            status, info = await get_json(proxy.url, "/node/info")
        assert status == 200
        assert info["counters"]["listener_events_dropped"] == 3
    finally:
        await proxy.stop()
        await node.stop()


async def test_a_farmer_node_has_one_registry_that_its_proxy_placer_and_agent_share(tmp_path: Path) -> None:
    """Each registry follows every directory shard: with one per node, the node listens to 16 keys, not
    16 per user of the registry (the proxy, the placer that the auditor and uploads use, the agent)."""
    node = await start_node()
    services = Services(node, Farming(ChunkStore(tmp_path / "chunks"), ping_interval=0.2))
    proxy = ProxyServer(node, "127.0.0.1", 0, services=services)
    await proxy.start()
    await services.start()
    services.run()
    try:

        async def registered() -> bool:
            status, online = await get_json(proxy.url, "/api/online/json")  # through the proxy's registry
            return status == 200 and [f["nodeid"] for f in online["farmers"]] == [node.node_id.hex()]

        await eventually(registered)
        assert await services.placer.farmers() == [node.node_id]  # the placer's view
        _, info = await get_json(proxy.url, "/node/info")
        assert info["listeners"] == len(DIRECTORY_KEYS)
    finally:
        await services.stop()
        await proxy.stop()
        await node.stop()


async def test_a_dhtmesh_run_farmer_answers_its_proxy_and_its_chunk_port_from_one_registry(
    spawn: Callable[..., NodeProcess],
) -> None:
    """The proxy's farmer routes and the chunk port's "is the challenger a registered farmer" both open
    a registry view: in `dhtmesh run` it is the same one (16 listened keys, not 32)."""
    farmer = spawn("farmer", "--farmer", "--ping-interval", "0.5")

    async def registered() -> bool:
        _, online = await get_json(farmer.url, "/api/online/json")  # opens the proxy's view
        return [f["nodeid"] for f in online["farmers"]] == [farmer.node_id]

    await eventually(registered, within=20)
    stranger = ChunkClient(Identity.generate())
    with pytest.raises(HolderRefused, match=NOT_AUDITOR):  # the chunk port asked its view, and refused
        await stranger.audit(farmer.address, bytes.fromhex(farmer.node_id), new_challenge(os.urandom(32), 1, 1))
    _, info = await get_json(farmer.url, "/node/info")
    assert info["listeners"] == len(DIRECTORY_KEYS)


@pytest.mark.process  # runs the CLI
def test_a_bootstrap_address_the_socket_cannot_reach_is_refused_with_one_line(tmp_path: Path) -> None:
    host = loopback_host()
    result = run_cli(
        "run", "-p", "0", "--bind", host, "--proxyserver", "0", "--persist", str(tmp_path), "-b", "[::1]:4222"
    )
    assert_one_line_error(result, "[::1]:4222", "IPv4", host)


async def test_a_node_skips_a_bootstrap_address_of_the_other_family_and_joins_through_the_others(
    spawn: Callable[..., NodeProcess],
) -> None:
    first = spawn("first")
    second = spawn("second", "-b", "[::1]:4222", "-b", first.udp)

    async def joined() -> bool:
        _, info = await get_json(second.url, "/node/info")
        return info["ipv4"]["good"] >= 1

    await eventually(joined, within=20)
    _, info = await get_json(second.url, "/node/info")
    assert not any(name.startswith("loop") for name in info["counters"])  # the join loop never failed
    warning = _stop_and_read_stderr(second)
    assert "skipping bootstrap [::1]:4222" in warning and "IPv4" in warning
    assert "Traceback" not in warning


def _stop_and_read_stderr(node: NodeProcess) -> str:
    os.kill(node.pid, signal.SIGTERM)
    node.process.wait(timeout=10)
    assert node.process.stderr is not None
    return node.process.stderr.read()


# Where the package may start a task itself: each is a short job its starter awaits or keeps (the
# supervisor and the task set are the two owners of background work).
OWNED_TASKS = {
    "node/tasks.py": 2,  # TaskSet.spawn, Supervisor.start
    "node/dht.py": 1,  # get_stream's lookup, awaited by the stream
    "node/blobs/upload.py": 1,  # the placements of one upload, gathered by it
    "node/transfer/proof_trees.py": 1,  # a tree being built, awaited by whoever asks for it
    "node/wire/fragments.py": 1,  # pieces of one transfer, in a TaskGroup
    "node/lookups/traverse.py": 1,  # the queries of one lookup, awaited by it
    "node/blobs/download.py": 1,  # the chunk fetches of one read, awaited by it
    # a push socket's reader, acknowledger and appends under way, a pull socket's listener and sender:
    # each in its socket's TaskGroup
    "proxy/stream_sockets.py": 5,
}


def test_background_work_starts_only_through_the_supervisor_or_a_task_set() -> None:
    found: dict[str, int] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.split("/")[0] in ("tests", "scripts", "build", ".venv"):
            continue
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("create_task", "ensure_future")
        ]
        if calls:
            found[relative] = len(calls)
    assert found == OWNED_TASKS
