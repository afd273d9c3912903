"""Attacks on the data streams (issue 17), each against real in-process nodes (real TCP and UDP sockets,
real SQLite): a hostile node on the streams' TCP port that pipelines requests and never reads the
answers (the node's send buffer), and a user who pushes the largest possible entry id (the stream's id
space used up: every later append failed). The attacks the other stream tests already make (no hello, a
hello signed for another node, replica ops from a non-home, bad frames: test_stream_replication; bad
frames, tokens and sockets: test_stream_sockets) are not repeated here."""

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from test_stream_replication import Tokens

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.records.stream import KIND, StreamRecord
from dhtmesh.node.services import Services
from dhtmesh.node.signing import PutRefused
from dhtmesh.node.streams import ids
from dhtmesh.node.streams.errors import BadStreamRequest
from dhtmesh.node.streams.wire import HELLO, HELLO_METHOD, HELLO_PATH, read_frame, request
from dhtmesh.node.transfer.framing import frame
from dhtmesh.testing.meshes import Mesh

pytestmark = pytest.mark.unit
TOKEN = "mallory's token"
LONG_OP = "r." + "x" * 3900  # an unknown op is echoed in its refusal: ~4 KiB answered per request
PIPELINED = 4096  # ~16 MiB of answers: well above what the kernel's socket buffers take


@pytest.fixture
async def node() -> AsyncIterator[Services]:
    mesh = Mesh()
    services = Services((await mesh.grow(1))[0])
    services.streams.accounts = Tokens({TOKEN: "mallory"})  # type: ignore[assignment]
    try:
        await services.start()
        yield services
    finally:
        await services.stop()
        await mesh.stop()


async def _hostile_link(services: Services) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from a node of the attacker's own (any identity passes the hello), which reads
    almost nothing: its receive buffer is as small as the kernel allows."""
    host, port = services.node.address[:2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    auth = sign_request(Identity.generate(), HELLO_METHOD, HELLO_PATH, b"", services.node.node_id)
    writer.write(frame({"op": HELLO, "rid": 0, "auth": auth}))
    _, body = await read_frame(reader)
    assert "ok" in body
    return reader, writer


def _buffered(services: Services) -> int:
    """The bytes the node's port holds for its peers, not yet taken by their sockets."""
    return max((w.transport.get_write_buffer_size() for w in services.port._open), default=0)


async def test_pipelined_requests_whose_answers_are_never_read_do_not_fill_the_nodes_memory(
    node: Services,
) -> None:
    _, writer = await _hostile_link(node)
    writer.write(b"".join(request(LONG_OP, rid, {}) for rid in range(1, PIPELINED + 1)))
    most = 0
    for _ in range(30):  # the node reads on only as fast as the attacker takes its answers
        await asyncio.sleep(0.1)
        most = max(most, _buffered(node))
    assert most < 1024 * 1024, f"the node buffered {most} bytes of answers nobody reads"
    assert node.node.counters.get("stream_port_unknown_ops") < PIPELINED  # it stopped reading
    writer.close()
    assert await node.streams.append(TOKEN, "honest", [(b"still served", None)])


async def test_the_largest_entry_id_cannot_use_up_a_streams_ids(node: Services) -> None:
    await node.streams.append(TOKEN, "s", [(b"first", None)])
    for last in (f"{ids.MAX_PART}-{ids.MAX_PART}", f"{ids.MAX_PART}", f"{ids.MAX_EXPLICIT_MS + 1}-0"):
        with pytest.raises(BadStreamRequest, match="at most"):
            await node.streams.append(TOKEN, "s", [(b"the end", last)])
    far = f"{ids.MAX_EXPLICIT_MS}-{ids.MAX_PART}"  # the highest id a writer may name: ids go on after it
    assert await node.streams.append(TOKEN, "s", [(b"far", far)]) == [far]
    after = await node.streams.append(TOKEN, "s", [(b"next", None), (b"and next", None)])
    assert after == [f"{ids.MAX_EXPLICIT_MS + 1}-0", f"{ids.MAX_EXPLICIT_MS + 1}-1"]
    assert node.node.counters.get("stream_port_internal_errors") == 0


@pytest.fixture
async def mesh() -> AsyncIterator[list[Services]]:
    nodes = Mesh()
    started: list[Services] = []
    try:
        for each in await nodes.grow(4):
            services = Services(each)
            services.streams.accounts = Tokens({TOKEN: "mallory"})  # type: ignore[assignment]
            started.append(services)
            await services.start()
        yield started
    finally:
        for services in started:
            await services.stop()
        await nodes.stop()


async def test_a_backdated_record_naming_the_attackers_homes_does_not_take_over_a_stream(
    mesh: list[Services],
) -> None:
    honest, attacker, newcomer = mesh[0], mesh[3], mesh[1]
    await honest.streams.append(TOKEN, "cam", [(b"frame", None)])
    mine = (attacker.node.node_id, *attacker.node.address[:2])
    forged = StreamRecord("cam", attacker.node.node_id, (mine,), 0)  # "made" in 1970: the earliest
    with pytest.raises(PutRefused, match="another owner"):  # the record's value id is the honest creator's
        await attacker.node.put(KIND.key_for(forged), KIND.sign(attacker.node.identity, forged, 1), permanent=True)
    newcomer.streams.book._known.clear()  # a node that has not looked the stream up yet
    record = await newcomer.streams.book.find("cam")
    assert record is not None and record.creator == honest.node.node_id
    assert [e.data for e in await newcomer.streams.read(TOKEN, {"cam": "0"}, 10)] == [b"frame"]
