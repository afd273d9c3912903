"""A data stream on a mesh of real `dhtmesh run` processes survives the loss of a home replica: entries
are pushed through one node and pulled through another while one of the stream's homes is SIGKILLed; every
entry the pusher saw acknowledged is pulled, once and in order, and the stream takes entries after the
kill. The killed home restarts with what it held."""

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from dhtmesh.client.streams import SocketClosed, StreamClient
from dhtmesh.testing import NodeProcess, ProcessGroup, run_cli

pytestmark = pytest.mark.process

NODES = 5
USER, PASSWORD = "faulty", "correct horse battery staple"
BATCHES, PER_BATCH = 60, 20
KILL_AFTER = 20  # batches acknowledged before the home is killed


@dataclass
class Mesh:
    group: ProcessGroup
    nodes: list[NodeProcess]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    group = ProcessGroup(tmp_path_factory.mktemp("stream-faults"))
    try:
        first = group.launch("n0")
        nodes = [first] + [group.launch(f"n{i}", "-b", first.udp) for i in range(1, NODES)]
        added = run_cli("user", "add", USER, "--url", first.url, env={"DHTMESH_PASSWORD": PASSWORD})
        assert added.returncode == 0, added.stderr
        yield Mesh(group, nodes)
    finally:
        group.stop()


def entry(batch: int, index: int) -> bytes:
    return f"{batch:04d}:{index:03d}:".encode() + bytes(1000)


async def push_all(client: StreamClient, sid: str, killed: asyncio.Event, kill: "asyncio.Future[None]") -> list[str]:
    """Push every batch (batch mode, acknowledged), reconnecting after a refused batch; the ids of the
    batches acknowledged, in order."""
    acked: list[str] = []
    batch = 0
    while batch < BATCHES:
        try:
            async with client.push(sid, batch=True, ack=True) as pusher:
                while batch < BATCHES:
                    ids = await pusher.send([entry(batch, i) for i in range(PER_BATCH)])
                    assert ids is not None and len(ids) == PER_BATCH
                    acked += ids
                    batch += 1
                    if batch == KILL_AFTER and not kill.done():
                        kill.set_result(None)
                        await killed.wait()
        except (SocketClosed, aiohttp.ClientError, OSError):
            await asyncio.sleep(0.5)  # the batch in flight was not acknowledged: send it again
    return acked


async def pull_until(client: StreamClient, sid: str, wanted: set[str]) -> list[tuple[str, bytes]]:
    pulled: list[tuple[str, bytes]] = []
    async with client.pull(sid, last_entry_id="0", count=100) as puller:
        while not wanted <= {entry_id for entry_id, _ in pulled}:
            for _, entry_id, data in await puller.recv():
                pulled.append((entry_id, data))
    return pulled


def id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def test_a_home_killed_mid_stream_loses_no_acknowledged_entry(mesh: Mesh) -> None:
    pusher_node, puller_node = mesh.nodes[1], mesh.nodes[2]
    writer, reader = StreamClient(pusher_node.url), StreamClient(puller_node.url)
    try:
        await writer.login(USER, PASSWORD)
        await reader.login(USER, PASSWORD)
        await writer.put_stream("faults", {"desc": "a home dies"})
        homes = (await reader.stream("faults"))["homes"]
        assert len(homes) == 3
        by_id = {node.node_id: node for node in mesh.nodes}
        spare = [home for home in homes if home not in {pusher_node.node_id, puller_node.node_id}]
        victim = by_id[spare[0]]  # the primary when it is neither the pusher's node nor the puller's

        kill: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        killed = asyncio.Event()

        async def killer() -> None:
            await kill
            os.kill(victim.pid, signal.SIGKILL)
            victim.process.wait(timeout=10)
            killed.set()

        _, acked = await asyncio.gather(killer(), push_all(writer, "faults", killed, kill))
        assert len(acked) >= BATCHES * PER_BATCH
        pulled = await asyncio.wait_for(pull_until(reader, "faults", set(acked)), 120)
        ids = [entry_id for entry_id, _ in pulled]
        assert ids == sorted(ids, key=id_key) and len(ids) == len(set(ids))  # in order, each once
        assert set(acked) <= set(ids)
        payloads = {data[:9] for _, data in pulled}
        assert {entry(b, i)[:9] for b in range(BATCHES) for i in range(PER_BATCH)} <= payloads

        # Back on its data directory and port (the stream's record names its homes' addresses), the killed
        # home serves the whole stream again.
        port = str(victim.address[1])
        restarted = mesh.group.launch(victim.data_dir.name, "-p", port, "-b", mesh.nodes[0].udp)
        again = StreamClient(restarted.url)
        try:
            await again.login(USER, PASSWORD)
            # Its first request finds the stream served in a newer term and is sent to that primary (it
            # neither fails nor takes the stream over).
            pulled_again = await asyncio.wait_for(pull_until(again, "faults", set(acked)), 120)
            assert [entry_id for entry_id, _ in pulled_again][: len(ids)] == ids
        finally:
            await again.close()
    finally:
        await writer.close()
        await reader.close()
