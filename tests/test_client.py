"""The typed client (`dhtmesh.client`) against a real node and its real proxy: every method, the
paths it builds held to the proxy's own route table (every field one segment), HTTP errors as one
`ApiError`, a refused connection as `Unreachable`, a silent one as `TimedOut` and a garbled answer as
`BadAnswer` (from a tiny aiohttp server of the test's own), the listen stream, push, the farmer routes,
blobs on real farmer processes, and the blocking `SyncClient` on a loop of its own."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from dhtmesh.api import paths
from dhtmesh.api.keys import parse_key
from dhtmesh.client import ApiError, BadAnswer, Client, ClientError, NotRegistered, SyncClient, TimedOut, Unreachable
from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.records.farmer import HEIGHT_LIMIT
from dhtmesh.node.records.farmer_events import SHARD_BYTES
from dhtmesh.node.values import Value, sign_value
from dhtmesh.proxy.routes import ROUTES
from dhtmesh.testing import NodeProcess, eventually

from conftest import MeshFactory, Serve


def test_every_path_the_client_builds_is_a_route_of_the_proxy() -> None:
    served = {route.path for route in ROUTES}
    assert set(paths.TEMPLATES) == served  # and every route's path is named in the contract
    assert paths.key_path("room?2") == f"/key/{parse_key('room?2').hex()}"
    assert paths.key_path(bytes(range(20)), paths.CANCEL, value_id=7) == f"/key/{bytes(range(20)).hex()}/7"
    farmer = bytes(range(20))
    escaped = paths.farmer_path(paths.REGISTER, farmer, payout_addr="a/b?c#d e")
    assert escaped == f"/api/register/{farmer.hex()}/a%2Fb%3Fc%23d%20e"
    assert paths.farmer_path(paths.HEIGHT, farmer, height="..") == f"/api/height/{farmer.hex()}/%2E%2E"
    assert paths.blob_path("../x") == "/api/blob/..%2Fx" and paths.blob_path(".") == "/api/blob/%2E"


async def test_node_info_stats_and_the_openapi_document(serve: Serve) -> None:
    node, url = await serve()
    async with Client(url) as client:
        info = await client.info()
        stats = await client.stats()
        document = await client.openapi()
    assert info["node_id"] == node.node_id.hex()
    assert stats["nodeInfo"]["node_id"] == node.node_id.hex() and stats["listenCount"] == 0
    assert set(paths.TEMPLATES) <= set(document["paths"])


async def test_put_get_sign_encrypt_and_cancel(serve: Serve, make_mesh: MeshFactory) -> None:
    node, url = await serve()
    await node.join([(await make_mesh(2))[0].address])  # peers to hold replicas
    owner, recipient = Identity.generate(), Identity.generate()
    async with Client(url) as client:
        plain = await client.put("notes", Value(0, b"hello", utype="text/plain"))
        assert plain.value.id > 0 and plain.value.data == b"hello" and plain.replicas >= 1
        assert plain.document["id"] == str(plain.value.id)
        signed = sign_value(owner, parse_key("notes"), Value(5, b"mine", seq=2))
        assert (await client.put("notes", signed)).value == signed
        by_node = await client.sign("notes", Value(0, b"the node's"))
        assert by_node.value.owner == node.identity.public_key and by_node.value.verify(parse_key("notes"))
        sealed = await client.encrypt("notes", Value(0, b"secret"), recipient.public_key.hex())
        assert sealed.value.encrypted and sealed.value.to == recipient.node_id
        found = {value.id: value for value in await client.values("notes")}
        assert found[plain.value.id].data == b"hello" and found[5] == signed
        assert {plain.value.id, 5, by_node.value.id, sealed.value.id} <= set(found)
        assert [document async for document in client.get(parse_key("notes"))] != []
        kept = await client.put("kept", {"data": "a2VwdA=="}, permanent=True)
        assert (await client.stats())["totalPermanentPuts"] == 1
        assert await client.cancel("kept", kept.value.id) == {"cancelled": str(kept.value.id)}
        with pytest.raises(ApiError) as again:
            await client.cancel("kept", kept.value.id)
    assert again.value.status == 404 and "no permanent put" in again.value.message


async def test_http_errors_are_one_exception_with_the_status_and_the_err_text(serve: Serve) -> None:
    _, url = await serve()
    async with Client(url) as client:
        with pytest.raises(ApiError) as bad_value:
            await client.put("k", {"data": "not base64!"})
        with pytest.raises(ApiError) as bad_id:
            await client.cancel("k", "abc")
        with pytest.raises(ApiError) as no_farmer:
            await client.farmer(bytes(20))
        with pytest.raises(ApiError) as no_blob:
            await client.read_blob("00" * 32)
    assert (bad_value.value.status, bad_value.value.message) == (400, "data is not valid base64")
    assert str(bad_value.value) == "400: data is not valid base64"
    assert bad_id.value.status == 400 and "value id" in bad_id.value.message
    assert no_farmer.value.status == 404 and "Farmer not found" in no_farmer.value.message
    assert no_blob.value.status == 404


async def test_a_proxy_that_is_not_there_is_unreachable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, and is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Client(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(Unreachable):
            await client.info()


async def test_an_unopened_client_says_how_to_open_it() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await Client("http://127.0.0.1:9").info()


async def test_listen_streams_current_then_new_values(serve: Serve) -> None:
    _, url = await serve()
    async with Client(url) as client, Client(url) as writer:
        await writer.put("room", Value(1, b"before"))
        stream = client.listen("room")
        async with contextlib.aclosing(stream):
            first = await anext(stream)
            assert (await writer.stats())["listenCount"] == 1
            await writer.put("room", Value(2, b"after"))
            second = await anext(stream)
        assert (first["id"], second["id"]) == ("1", "2")
        await eventually(lambda: _listens(writer), within=5)


async def _listens(client: Client) -> bool:
    return (await client.stats())["listenCount"] == 0


async def test_push_subscribe_renew_and_unsubscribe(serve: Serve) -> None:
    _, url = await serve(push_gateway="http://127.0.0.1:9")  # nothing listens there: pushes just fail
    async with Client(url) as client:
        await client.put("alerts", Value(3, b"held"))
        assert await client.subscribe("alerts", "device-token", platform="android") == []
        renewed = await client.subscribe("alerts", "device-token", platform="android")
        assert [document["id"] for document in renewed] == ["3"]
        await client.unsubscribe("alerts", "device-token")
    _, without_push = await serve()
    async with Client(without_push) as client:
        with pytest.raises(ApiError) as off:
            await client.subscribe("alerts", "device-token")
    assert off.value.status == 501


async def test_a_farmer_through_its_life(serve: Serve) -> None:
    node, url = await serve()
    farmer, stranger = Identity.generate(), Identity.generate()
    async with Client(url) as client:
        assert await client.address() == node_address(node.node_id)
        assert await client.node_id() == node.node_id
        registered = await client.register(farmer, ip="127.0.0.1")
        assert (registered["nodeid"], registered["payout_addr"]) == (farmer.node_id.hex(), node_address(farmer.node_id))
        with pytest.raises(ApiError) as twice:
            await client.register(farmer)
        assert twice.value.status == 409
        before = (await client.stats())["totalRequests"]
        assert await client.ping(farmer) == "Ping accepted."
        # The record, the ping and this count: the node id is asked once per client, not per change.
        assert (await client.stats())["totalRequests"] == before + 3
        assert await client.set_height(farmer, 12) == "Height accepted."
        assert await client.set_bandwidth(farmer, 100, 200) == "Bandwidth accepted."
        with pytest.raises(ApiError) as too_high:
            await client.set_height(farmer, HEIGHT_LIMIT + 1)
        assert too_high.value.status == 413
        with pytest.raises(NotRegistered):
            await client.ping(stranger)
        current = await client.farmer_record(farmer.node_id)
        assert current is not None and current[1].height == 12 and current[0].seq == 3
        assert await client.farmer_record(stranger.node_id) is None
        shown = await client.farmer(farmer.node_id)
        assert (shown["height"], shown["bandwidth_upload"], shown["ip"]) == (12, 100, "127.0.0.1")
        audits = await client.farmer_audits(farmer.node_id)
        assert audits["nodeid"] == farmer.node_id.hex() and audits["audits"] == []

        async def listed() -> bool:
            return [f["nodeid"] for f in await client.online_farmers()] == [farmer.node_id.hex()]

        await eventually(listed)
        total = await client.total()
        assert total.total_farmers == 1 and total.total_TB == round(12 * SHARD_BYTES / 1024**4, 2)
        assert node_address(farmer.node_id) in await client.online()


async def test_a_payout_with_a_slash_a_question_mark_or_dots_reaches_the_register_route(serve: Serve) -> None:
    _, url = await serve()
    async with Client(url) as client:
        for payout in ("1Bad/payout", "1Bad?payout=1", "1Bad#payout", ".."):
            with pytest.raises(ApiError) as refused:  # not another route's 404 or 405
                await client.register(Identity.generate(), payout)
            assert refused.value.status == 400 and "Invalid payout address" in refused.value.message, payout


async def test_an_answer_that_is_not_json_is_a_bad_answer(serve: Serve) -> None:
    _, url = await serve()
    async with Client(url) as client:
        with pytest.raises(BadAnswer):
            await client.transport.document("GET", paths.ONLINE)  # dataserv's HTML lines


@contextlib.asynccontextmanager
async def answering(*routes: web.RouteDef) -> AsyncIterator[str]:
    """A tiny aiohttp server on 127.0.0.1 with `routes` (what no node would answer); yields its URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # a handler still waiting is not waited for
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _garbage_line(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"id": "1", "data": ""}\nnot JSON\n')
    return response


def _answer(response: web.Response) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        return response

    return handler


async def test_garbled_answers_are_bad_answers_never_a_raw_error() -> None:
    blob = {"id": "ab" * 32, "size": 3, "chunks": 1}
    garbage = [
        web.get(paths.LISTEN, _garbage_line),
        web.post(paths.KEY, _answer(web.json_response({"id": "1", "data": "", "replicas": "x"}))),
        web.route("SUBSCRIBE", paths.KEY, _answer(web.Response(text='{"id": "1"}\nnot JSON\n'))),
        web.post(paths.BLOBS, _answer(web.json_response(blob))),  # 200: a stored blob is answered with 201
    ]
    async with answering(*garbage) as url, Client(url) as client:
        stream = client.listen("k")
        async with contextlib.aclosing(stream):
            assert (await anext(stream))["id"] == "1"
            with pytest.raises(BadAnswer, match="not JSON"):
                await anext(stream)
        with pytest.raises(BadAnswer, match="replicas"):
            await client.put("k", Value(1, b""))
        with pytest.raises(BadAnswer, match="not JSON"):
            await client.subscribe("k", "device-token")
        with pytest.raises(BadAnswer, match="not 201"):
            await client.put_blob(b"abc")


async def test_a_node_that_never_answers_times_out_as_the_client_was_told() -> None:
    async def silent(_: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with answering(web.get(paths.NODE_INFO, silent)) as url, Client(url, timeout=0.3) as client:
        with pytest.raises(TimedOut) as late:
            await client.info()
    assert isinstance(late.value, Unreachable) and isinstance(late.value, ClientError)
    assert "GET /node/info: timed out" in str(late.value)


def sync_round_trip(url: str) -> tuple[int, list[bytes], list[dict], dict]:
    with SyncClient(url) as client:
        stored = client.put("sync", Value(0, b"blocking"))
        listen = client.listen("sync")
        first = next(listen)
        listen.close()
        return stored.value.id, [value.data for value in client.values("sync")], [first], client.info()


async def test_the_sync_client_runs_on_a_loop_of_its_own(serve: Serve) -> None:
    node, url = await serve()
    value_id, data, heard, info = await asyncio.to_thread(sync_round_trip, url)
    assert data == [b"blocking"] and heard[0]["id"] == str(value_id)
    assert info["node_id"] == node.node_id.hex()


# ---- blobs, on three farmer processes ---------------------------------------------------------------


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.process
async def test_blobs_up_and_down(spawn: Callable[..., NodeProcess]) -> None:
    first = spawn("f0", "--farmer", "--ping-interval", "0.5")
    farmers = [first] + [spawn(f"f{i}", "-b", first.udp, "--farmer", "--ping-interval", "0.5") for i in (1, 2)]
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: more than one chunk
    async with Client(farmers[0].url) as client, Client(farmers[2].url) as reader:

        async def all_online() -> bool:
            return len(await client.online_farmers()) == 3

        await eventually(all_online, within=30)
        stored = await client.put_blob(_pieces(data, 100_000), len(data))  # BadAnswer unless 201
        assert stored.size == len(data) and stored.chunks >= 1 and len(bytes.fromhex(stored.id)) == 32
        async with client.transport.response("POST", paths.BLOBS, data=b"raw") as created:
            assert created.status == 201 and set(await created.json()) == {"id", "size", "chunks"}
        assert await reader.read_blob(stored.id) == data
        assert await reader.read_blob(stored.id, "bytes=10-19") == data[10:20]
        async with reader.open_blob(stored.id) as download:
            assert download.length == len(data) and download.status == 200
            assert b"".join([piece async for piece in download.pieces(4096)]) == data
        assert (await client.put_blob(b"small")).size == 5
        with pytest.raises(ApiError) as bad_id:
            await reader.read_blob("not-a-blob-id")
    assert bad_id.value.status == 400
    assert await asyncio.to_thread(_sync_blob, farmers[1].url, stored.id) == data


def _sync_blob(url: str, blob_id: str) -> bytes:
    with SyncClient(url) as client:
        assert client.put_blob(b"sync blob").size == 9
        return client.read_blob(blob_id)
