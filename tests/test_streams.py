"""ptg-api-server's streams and data routes on a mesh of real `dhtmesh run` processes, through `StreamClient`
and raw HTTP/WebSockets: a user made with `dhtmesh user add` logs in; streams are created, listed, read
and deleted through different nodes; entries pushed through one node are pulled through another, batched
or not, acknowledged or not, across several streams, resumed from the last id without a gap, shared by a
consumer group (redelivered when a consumer never acks), and trimmed by the stream's retention. Bad frames
close the socket with a code and a reason and lose nothing acknowledged; bad, expired and missing tokens
are 401 (also before a WebSocket's handshake); a foreign page cannot open a data socket.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from dhtmesh.client import ApiError
from dhtmesh.client.streams import Puller, StreamClient
from dhtmesh.testing import NodeProcess, ProcessGroup, run_cli
from dhtmesh.testing.waiting import eventually

pytestmark = pytest.mark.process

USER = "alice"
PASSWORD = "correct horse battery staple"
WITHIN = 30.0  # seconds a pull may take to show what was pushed
FOREIGN = "http://evil.example"


@dataclass
class Mesh:
    nodes: list[NodeProcess]
    token: str

    @property
    def a(self) -> NodeProcess:
        return self.nodes[0]

    @property
    def b(self) -> NodeProcess:
        return self.nodes[1]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    group = ProcessGroup(tmp_path_factory.mktemp("stream-mesh"))
    try:
        first = group.launch("n0")
        nodes = [first] + [group.launch(f"n{i}", "-b", first.udp) for i in range(1, 4)]
        added = run_cli("user", "add", USER, "--url", first.url, env={"DHTMESH_PASSWORD": PASSWORD}, timeout=60)
        assert added.returncode == 0, added.stderr
        yield Mesh(nodes, asyncio.run(_login(nodes[1].url)))
    finally:
        group.stop()


async def _login(url: str) -> str:
    client = StreamClient(url)
    try:
        return await eventually_value(lambda: client.login(USER, PASSWORD))
    finally:
        await client.close()


async def eventually_value(call, within: float = WITHIN):  # type: ignore[no-untyped-def]
    """`call()`'s value once it stops raising (an account record, a stream record, takes a moment to
    be found from every node)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except ApiError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture
async def clients(mesh: Mesh) -> AsyncIterator[tuple[StreamClient, StreamClient]]:
    """A client of node A and one of node B, both with the user's token."""
    a, b = StreamClient(mesh.a.url, mesh.token), StreamClient(mesh.b.url, mesh.token)
    yield a, b
    await a.close()
    await b.close()


async def drain(puller: Puller, wanted: int) -> list[tuple[str, str, bytes]]:
    """Frame pairs until `wanted` entries came."""
    got: list[tuple[str, str, bytes]] = []
    async with asyncio.timeout(WITHIN):
        while len(got) < wanted:
            got += await puller.recv()
    return got


def payloads(entries: list[tuple[str, str, bytes]]) -> list[bytes]:
    return [data for _, _, data in entries]


async def test_a_stream_is_created_listed_described_and_deleted_across_nodes(
    clients: tuple[StreamClient, StreamClient],
) -> None:
    a, b = clients
    assert json.loads(str(await a.put_stream("life", {"desc": "d"}))) == {"desc": "d"}  # ptg: a JSON string
    assert json.loads(str(await a.put_stream("life", {"max_len": 50}))) == {"desc": "d", "max_len": 50}
    assert json.loads(str(await a.put_stream("life", {"k": 1}, override=True))) == {"k": 1}
    await eventually(lambda: _has(b, "life"), within=WITHIN)
    info = await eventually_value(lambda: b.stream("life"))
    assert info["sid"] == "life" and info["length"] == 0 and json.loads(info["meta"]) == {"k": 1}
    listed = await b.streams(info=True)
    assert [one["sid"] for one in listed if one["sid"] == "life"] == ["life"]
    await a.post("life", [b"x", b"yz"])
    assert await b.delete("life") == [1, 2, 1]
    with pytest.raises(ApiError) as gone:
        await a.stream("life")
    assert gone.value.status == 404
    with pytest.raises(ApiError) as again:
        await a.delete("life")
    assert again.value.status == 404


async def _has(client: StreamClient, sid: str) -> bool:
    return sid in await client.streams()


@pytest.mark.parametrize(("batch", "ack"), [(True, True), (True, False), (False, True), (False, False)])
async def test_entries_pushed_through_a_are_pulled_through_b_in_order(
    clients: tuple[StreamClient, StreamClient], batch: bool, ack: bool
) -> None:
    a, b = clients
    sid = f"ab-{batch}-{ack}"
    await a.put_stream(sid, {})
    sent = [f"entry {i}".encode() * (i + 1) for i in range(12)]
    async with b.pull(sid, last_entry_id="0", count=5, ack=ack) as puller:
        async with a.push(sid, batch=batch, ack=ack) as pusher:
            ids = [await pusher.send(sent[i : i + 4]) for i in range(0, 12, 4)]
        got = []
        async with asyncio.timeout(WITHIN):
            while len(got) < len(sent):
                frame = await puller.recv()
                assert 1 <= len(frame) <= 5  # count is honoured
                got += frame
                if ack:
                    await puller.ack()
    assert payloads(got) == sent
    if ack:
        assert [entry_id for _, entry_id, _ in got] == [entry_id for batch_ids in ids for entry_id in batch_ids or []]


async def test_entries_of_a_whole_mebibyte_cross_from_a_to_b(clients: tuple[StreamClient, StreamClient]) -> None:
    a, b = clients
    await a.put_stream("big", {})
    sent = [bytes([i]) * (1024 * 1024) for i in range(3)]  # MAX_ENTRY each: the largest an entry may be
    async with a.push("big", batch=True, ack=True) as pusher:
        ids = await pusher.send(sent)
    async with b.pull("big", last_entry_id="0", count=3) as puller:
        got = await drain(puller, len(sent))
    assert payloads(got) == sent
    assert [entry_id for _, entry_id, _ in got] == ids


async def test_entries_sent_one_per_frame_then_a_close_are_all_appended(
    clients: tuple[StreamClient, StreamClient],
) -> None:
    """The push socket reads ahead while it appends (group commit): a client that sends entry by entry
    without acknowledgements and closes at once still finds every entry it sent, in order."""
    a, b = clients
    await a.put_stream("one-by-one", {})
    sent = [f"single {i}".encode() for i in range(300)]
    async with a.push("one-by-one") as pusher:
        for entry in sent:
            await pusher.send([entry])

    got: list[tuple[str, str, bytes]] = []

    async def all_there() -> bool:
        got[:] = await b.get("one-by-one", last_entry_id="0", count=1000)
        return len(got) == len(sent)

    await eventually(all_there, within=WITHIN)
    assert payloads(got) == sent


async def test_several_streams_at_once_and_get_data_with_entry_offsets(
    clients: tuple[StreamClient, StreamClient], mesh: Mesh
) -> None:
    a, b = clients
    async with a.push("m1+m2", batch=True, ack=True) as pusher:
        ids = await pusher.send([b"one", b"two", b"three"], sids=["m1", "m2", "m1"])
    assert ids is not None and len(ids) == 3
    got = await eventually_value(lambda: _entries(b, "m1+m2", "0", 3))
    assert sorted(got) == sorted([("m1", ids[0], b"one"), ("m2", ids[1], b"two"), ("m1", ids[2], b"three")])
    assert await b.get("m1+m2", "*", 1) == [("m1", ids[2], b"three"), ("m2", ids[1], b"two")]
    assert await b.get("m1+m2", f"{ids[0]}+0", 10) == [("m1", ids[2], b"three"), ("m2", ids[1], b"two")]
    assert await b.get("no-such-stream", "0", 10) == []
    async with a.push("*", batch=True, ack=True) as pusher:  # ptg's every-stream socket: each entry names its own
        [star] = await pusher.send([b"starred"], sids=["m3"]) or []
    assert await eventually_value(lambda: _entries(b, "m3", "0", 1)) == [("m3", star, b"starred")]
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{mesh.b.url}/data/m1/", params={"last_entry_id": "0", "count": "5"}, headers=_bearer(mesh.token)
        ) as response,
    ):
        assert response.status == 200 and response.content_type == "application/octet-stream"
        assert json.loads(response.headers["entry-offset"]) == [["m1", ids[0], 0], ["m1", ids[2], 3]]
        assert await response.read() == b"onethree"


async def _entries(client: StreamClient, sid: str, last: str, wanted: int) -> list[tuple[str, str, bytes]]:
    got = await client.get(sid, last, 10)
    if len(got) < wanted:
        raise ApiError(404, "not all there yet")
    return got


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_pull_resumed_on_another_node_from_the_last_id_misses_nothing(
    clients: tuple[StreamClient, StreamClient],
) -> None:
    a, b = clients
    sent = [f"r{i}".encode() for i in range(10)]
    await a.post("resume", sent)
    async with a.pull("resume", last_entry_id="0", count=3) as puller:
        first = await drain(puller, 3)
    async with b.pull("resume", last_entry_id=first[-1][1], count=4) as puller:
        rest = await drain(puller, 7)
    assert payloads(first + rest) == sent
    async with b.pull("resume", last_entry_id="0", latest=True, timeout=2000) as puller:
        assert payloads(await puller.recv()) == [sent[-1]]  # latest=true asks for only the newest


async def test_dollar_is_only_what_comes_next_and_a_timeout_ends_the_socket(
    clients: tuple[StreamClient, StreamClient],
) -> None:
    a, b = clients
    await a.post("fresh", [b"old"])
    await eventually_value(lambda: _entries(b, "fresh", "0", 1))  # B finds the stream: `$` is after "old"
    async with b.pull("fresh", last_entry_id="$") as puller:
        await a.post("fresh", [b"new"])
        assert payloads(await drain(puller, 1)) == [b"new"]
    async with b.pull("fresh", last_entry_id="$", timeout=500) as puller:
        assert await puller.recv() == []  # one empty wait: closed normally (1000)


async def test_a_consumer_group_redelivers_what_a_consumer_never_acked(
    clients: tuple[StreamClient, StreamClient],
) -> None:
    a, b = clients
    sent = [f"job {i}".encode() for i in range(4)]
    await a.post("work", sent)
    async with a.pull("work", group="g", consumer="lazy", count=2, ack_wait=1.0, timeout=5000) as lazy:
        taken = await lazy.recv()  # never acknowledged
    assert len(taken) == 2
    seen: list[bytes] = []
    async with b.pull("work", group="g", consumer="busy", count=4, ack_wait=1.0, timeout=10_000) as busy:
        async with asyncio.timeout(WITHIN):
            while sorted(set(seen)) != sorted(sent):
                entries = await busy.recv()
                assert entries, "the group ran dry before every entry was delivered"
                seen += payloads(entries)
                await busy.ack()
    assert set(payloads(taken)) <= set(seen)


async def test_retention_trims_to_max_len(clients: tuple[StreamClient, StreamClient]) -> None:
    a, b = clients
    await a.put_stream("short", {"max_len": 3})
    async with a.push("short", batch=True, ack=True) as pusher:
        await pusher.send([f"s{i}".encode() for i in range(5)])

    async def trimmed() -> bool:
        return (await b.stream("short"))["length"] == 3

    await eventually(trimmed, within=WITHIN)
    async with b.pull("short", last_entry_id="0", count=10, timeout=2000) as puller:
        assert payloads(await puller.recv()) == [b"s2", b"s3", b"s4"]


@pytest.mark.parametrize(
    ("query", "frames", "code"),
    [
        ({"batch": "false"}, [("text", "not an entry")], 1003),
        ({"batch": "true"}, [("text", "0,9,18")], 1007),  # ptg's own tests/ws_push.py
        ({"batch": "true"}, [("text", "[0, 3]"), ("bytes", b"xyzabc")], 1007),  # ptg README's start offsets
        ({"batch": "true"}, [("text", '[["elsewhere", 1]]'), ("bytes", b"x")], 1008),
        ({"batch": "true"}, [("text", '[["bad", "1-0", 1]]'), ("bytes", b"x")], 1007),  # not above the last id
        ({"batch": "false"}, [("bytes", bytes(1024 * 1024 + 1))], 1009),
    ],
)
async def test_a_bad_frame_closes_with_a_code_and_keeps_what_was_acked(
    mesh: Mesh, clients: tuple[StreamClient, StreamClient], query: dict[str, str], frames: list, code: int
) -> None:
    b = clients[1]
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{mesh.a.url}/data/bad/push", params={**query, "ack": "true"}, headers=_bearer(mesh.token)
        ) as socket,
    ):
        if query["batch"] == "true":
            await socket.send_str("[4]")
        await socket.send_bytes(b"good")
        acked = (await socket.receive_str()).split(",")
        for kind, frame in frames:
            await (socket.send_str(frame) if kind == "text" else socket.send_bytes(frame))
        closed = await socket.receive()
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == code, closed
        assert closed.extra  # a reason
    assert (acked[0], b"good") in [(entry_id, data) for _, entry_id, data in await b.get("bad", "*", 1000)]


async def test_tokens_bad_expired_or_missing_are_refused_before_any_work(mesh: Mesh) -> None:
    short = StreamClient(mesh.a.url)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{mesh.a.url}/token", params={"exp": "2"}, data={"username": USER, "password": PASSWORD}
        ) as response:
            expiring = (await response.json())["access_token"]
        async with session.ws_connect(
            f"{mesh.a.url}/data/expiring/push", params={"ack": "true"}, headers=_bearer(expiring)
        ) as socket:
            await socket.send_bytes(b"while valid")
            assert await socket.receive_str()
            await asyncio.sleep(3)
            await socket.send_bytes(b"once expired")  # the token is checked again on every append
            closed = await socket.receive()
            assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1008, closed
        for headers in ({}, _bearer("garbage"), _bearer(mesh.token + "x"), _bearer(expiring)):
            for path in ("/streams", "/streams/s", "/data/s?last_entry_id=0"):
                async with session.get(mesh.a.url + path, headers=headers) as response:
                    assert response.status == 401, (path, headers)
                    assert "err" in await response.json()
            for path in ("/data/s/push", "/data/s/pull"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(mesh.a.url + path, headers=headers)
                assert refused.value.status == 401, (path, headers)
        with pytest.raises(ApiError) as bad_login:
            await short.login(USER, "wrong")
        assert bad_login.value.status == 401
    await short.close()


async def test_a_foreign_page_can_neither_open_a_data_socket_nor_read_with_the_cookie(mesh: Mesh) -> None:
    cookie = {"Cookie": f'authorization="Bearer {mesh.token}"', "Origin": FOREIGN}
    async with aiohttp.ClientSession() as session:
        for path in ("/data/s/push", "/data/s/pull"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(mesh.a.url + path, headers=cookie)
            assert refused.value.status == 403
        async with session.get(f"{mesh.a.url}/data/s", headers=cookie) as response:
            # A browser shows a cross-origin answer to the page only if it allows credentials: it never does.
            assert "Access-Control-Allow-Credentials" not in response.headers
            assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_every_bound_is_a_clear_refusal_before_any_work(mesh: Mesh) -> None:
    url, auth = mesh.a.url, _bearer(mesh.token)
    many = "+".join(f"s{i}" for i in range(17))
    refused = [
        ("/data/s", {"count": "1001"}),
        ("/data/s", {"last_entry_id": "not-an-id"}),
        ("/data/a+b", {"last_entry_id": "1-0+2-0+3-0"}),
        (f"/data/{many}", {}),
        ("/data/s/pull", {}),  # a WebSocket route asked without an Upgrade
        ("/streams/a+b", {}),
    ]
    async with aiohttp.ClientSession() as session:
        for path, params in refused:
            async with session.get(url + path, params=params, headers=auth) as response:
                assert response.status == 400, (path, params, await response.text())
        for path, params in [
            ("/data/a+b/pull", {"group": "g"}),
            ("/data/s/pull", {"timeout": "0"}),
            ("/data/s/pull", {"ack_wait": "forever"}),
            ("/data/a+b/push", {"batch": "false"}),
            ("/data/*/pull", {}),
        ]:
            with pytest.raises(aiohttp.WSServerHandshakeError) as bad:
                await session.ws_connect(url + path, params=params, headers=auth)
            assert bad.value.status == 400, (path, params)
        held = [await session.ws_connect(f"{url}/data/held/pull", headers=auth) for _ in range(16)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as full:
            await session.ws_connect(f"{url}/data/held/pull", headers=auth)
        assert full.value.status == 429  # sockets per client host
        for socket in held:
            await socket.close()

        async def slot_free_again() -> bool:  # once the node's handler of a closed socket returned
            try:
                await (await session.ws_connect(f"{url}/data/held/pull", headers=auth)).close()
            except aiohttp.WSServerHandshakeError:
                return False
            return True

        await eventually(slot_free_again, within=WITHIN)
