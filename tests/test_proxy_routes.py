"""Every proxy route over real HTTP against a mesh of `dhtmesh run` processes on 127.0.0.1."""

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate
from yarl import URL

from dhtmesh.api.keys import parse_key
from dhtmesh.api.value_json import owner_from_pem, value_from_json
from dhtmesh.crypto import Identity, node_id_from_public_key, open_sealed
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.proxy.app import create_app
from dhtmesh.proxy.openapi import STANDARD_METHODS, document
from dhtmesh.proxy.route import table_path
from dhtmesh.proxy.routes import ROUTES
from dhtmesh.testing import NodeProcess, eventually

from support import get_json

Spawn = Callable[..., NodeProcess]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def read_json(response: aiohttp.ClientResponse) -> dict:
    return json.loads(await response.read())


async def lines_of(session: aiohttp.ClientSession, url: str) -> list[dict]:
    async with session.get(url) as response:
        assert response.status == 200
        return [json.loads(line) for line in (await response.text()).splitlines() if line]


async def next_line(response: aiohttp.ClientResponse, within: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(response.content.readline(), within))


@pytest.fixture
def mesh(spawn: Spawn) -> list[NodeProcess]:
    first = spawn("a")
    return [first, spawn("b", "-b", first.udp), spawn("c", "-b", first.udp)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def wait_connected(session: aiohttp.ClientSession, nodes: list[NodeProcess], good: int) -> None:
    async def connected() -> bool:
        infos = [await read_json(await session.get(f"{node.url}/")) for node in nodes]
        return all(info["ipv4"]["good"] >= good for info in infos)

    await eventually(connected, within=10, every=0.1)  # the mesh connected


async def test_node_info_is_live_and_truthful(spawn: Spawn, session: aiohttp.ClientSession) -> None:
    alone = spawn("alone")
    async with session.get(f"{alone.url}/") as response:
        assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
        info = await read_json(response)
    assert info["node_id"] == alone.node_id and info["public_ip"] == "127.0.0.1"
    assert info["ipv4"]["good"] == 0, "an isolated node must not look connected"
    assert {"dubious", "incoming"} <= info["ipv4"].keys() and "ops" in info and "storage_values" in info

    spawn("friend", "-b", alone.udp)
    await wait_connected(session, [alone], good=1)  # seen at once, not after a cache period
    node_info = await read_json(await session.get(f"{alone.url}/node/info"))
    assert node_info["ipv4"]["good"] == 1


async def test_put_get_and_legacy_routes(mesh: list[NodeProcess], session: aiohttp.ClientSession) -> None:
    await wait_connected(session, mesh, good=2)
    async with session.post(f"{mesh[0].url}/key/mykey", json={"data": b64(b"hello"), "id": "0"}) as response:
        assert response.status == 200
        stored = await read_json(response)
    assert stored["id"].isdecimal() and int(stored["id"]) > 0 and stored["replicas"] == 2

    async with session.get(f"{mesh[1].url}/key/mykey") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert lines == [{"data": b64(b"hello"), "id": stored["id"], "type": 0}]

    hashed = parse_key("mykey").hex()
    for url in (f"{mesh[2].url}/{hashed}", f"{mesh[2].url}/key/{hashed.upper()}zzz", f"{mesh[2].url}/mykey"):
        assert [line["id"] for line in await lines_of(session, url)] == [stored["id"]]

    async with session.post(f"{mesh[2].url}/legacykey", json={"data": b64(b"old style")}) as response:
        assert response.status == 200
    assert [base64.b64decode(v["data"]) for v in await lines_of(session, f"{mesh[0].url}/key/legacykey")] == [
        b"old style"
    ]
    assert await lines_of(session, f"{mesh[0].url}/key/never-put") == []


async def test_permanent_put_is_counted_in_stats_and_can_be_cancelled(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    async with session.post(f"{mesh[0].url}/key/kept", json={"data": b64(b"x"), "permanent": True}) as response:
        assert response.status == 200
        stored = await read_json(response)
    stats = await read_json(await session.get(f"{mesh[0].url}/node/stats"))
    assert stats["putCount"] == 1 and stats["totalPermanentPuts"] == 1
    assert stats["totalRequests"] >= 2 and stats["requestRate"] > 0 and stats["serverStartTime"] <= time.time()
    assert stats["nodeInfo"]["node_id"] == mesh[0].node_id and stats["listenCount"] == 0

    async with session.delete(f"{mesh[0].url}/key/kept/{stored['id']}") as response:
        assert response.status == 200
    stats = await read_json(await session.get(f"{mesh[0].url}/node/stats"))
    assert stats["totalPermanentPuts"] == 0
    for bad_id, status in ((stored["id"], 404), ("abc", 400), ("0", 400), (str(2**64), 400)):
        async with session.delete(f"{mesh[0].url}/key/kept/{bad_id}") as response:
            assert response.status == status and "err" in await read_json(response)


async def test_listen_receives_values_put_through_other_nodes_and_frees_on_disconnect(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    await wait_connected(session, mesh, good=2)
    await session.post(f"{mesh[0].url}/key/news", json={"data": b64(b"already there")})
    async with session.get(f"{mesh[2].url}/key/news/listen") as response:
        assert response.status == 200 and response.headers["Transfer-Encoding"] == "chunked"
        assert base64.b64decode((await next_line(response))["data"]) == b"already there"
        stats = await read_json(await session.get(f"{mesh[2].url}/node/stats"))
        assert stats["listenCount"] == 1
        await asyncio.sleep(0.5)
        for node, text in ((mesh[0], b"from a"), (mesh[1], b"from b")):
            await session.post(f"{node.url}/key/news", json={"data": b64(text)})
            assert base64.b64decode((await next_line(response))["data"]) == text
    for _ in range(50):
        stats = await read_json(await session.get(f"{mesh[2].url}/node/stats"))
        if stats["listenCount"] == 0:
            break
        await asyncio.sleep(0.1)
    assert stats["listenCount"] == 0, "a client that disconnects frees its listener"


async def test_legacy_listen_method(mesh: list[NodeProcess], session: aiohttp.ClientSession) -> None:
    await session.post(f"{mesh[0].url}/key/legacy-listen", json={"data": b64(b"v")})
    async with session.request("LISTEN", f"{mesh[1].url}/legacy-listen") as response:
        assert response.status == 200
        assert base64.b64decode((await next_line(response))["data"]) == b"v"


async def test_expired_values_are_announced_to_listeners(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    """Type 5 (IceCandidates) values live one minute, as in OpenDHT."""
    await wait_connected(session, mesh, good=2)
    async with session.get(f"{mesh[2].url}/key/short-lived/listen") as response:
        await asyncio.sleep(0.5)
        async with session.post(f"{mesh[0].url}/key/short-lived", json={"data": b64(b"ice"), "type": 5}) as put:
            stored = await read_json(put)
        fresh = await next_line(response)
        assert (fresh["id"], fresh.get("expired")) == (stored["id"], None)
        gone = await next_line(response, within=75)
        assert gone == {"data": b64(b"ice"), "expired": True, "id": stored["id"], "type": 5}


async def test_cors_options(mesh: list[NodeProcess], session: aiohttp.ClientSession) -> None:
    preflights = (("OPTIONS", "/key/k"), ("OPTIONS", "/k"), ("OPTIONS", "/key/k/listen"), ("GET", "/key/k/options"))
    for method, path in preflights:
        async with session.request(method, mesh[0].url + path) as response:
            assert response.status == 200
            assert "LISTEN" in response.headers["Access-Control-Allow-Methods"]
            assert response.headers["Access-Control-Allow-Headers"] == "content-type"
            assert response.headers["Access-Control-Max-Age"] == "86400"
            assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_sign_puts_a_value_signed_by_the_node_and_bumps_seq(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    await wait_connected(session, mesh, good=2)
    url = f"{mesh[0].url}/key/signed/sign"
    async with session.post(url, json={"data": b64(b"v1"), "id": "77"}) as response:
        assert response.status == 200
        first = await read_json(response)
    async with session.post(url, json={"data": b64(b"v2"), "id": "77"}) as response:
        second = await read_json(response)
    assert second["seq"] == first["seq"] + 1
    owner = owner_from_pem(first["owner"])
    assert node_id_from_public_key(owner).hex() == mesh[0].node_id, "signed with the node's own key"
    values = await lines_of(session, f"{mesh[1].url}/key/signed")
    assert len(values) == 1
    value = value_from_json(values[0])
    assert value.data == b"v2" and value.verify(parse_key("signed"))

    async with session.post(url, json=second) as response:
        assert response.status == 400, "an already signed value is POSTed to /key/{key}"


async def test_encrypt_puts_a_value_only_the_recipient_can_read(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    recipient = Identity.generate()
    body = {"data": b64(b"for your eyes"), "to": recipient.public_key.hex()}
    async with session.post(f"{mesh[0].url}/key/secret/encrypt", json=body) as response:
        assert response.status == 200
        stored = await read_json(response)
    assert "data" not in stored and stored["to"] == recipient.node_id.hex()
    (line,) = await lines_of(session, f"{mesh[1].url}/key/secret")
    value = value_from_json(line)
    assert value.verify(parse_key("secret"))
    assert open_sealed(recipient, value.data) == b"for your eyes"

    for bad, message in (({"data": b64(b"x")}, "No destination found"), ({"data": "", "to": "abcd"}, "public key")):
        async with session.post(f"{mesh[0].url}/key/secret/encrypt", json=bad) as response:
            assert response.status == 400 and message in (await read_json(response))["err"]


@pytest.fixture
async def push_gateway() -> AsyncIterator[tuple[str, list[dict]]]:
    """A small gorush-style receiver on 127.0.0.1 that records every `POST /api/push` body."""
    received: list[dict] = []

    async def push(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"counts": 1, "success": "ok"})

    app = web.Application()
    app.router.add_post("/api/push", push)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", received
    await runner.cleanup()


async def test_subscribe_pushes_through_the_gateway_and_unsubscribe_stops(
    spawn: Spawn, session: aiohttp.ClientSession, push_gateway: tuple[str, list[dict]]
) -> None:
    """Pushes carry OpenDHT 2.4's notification fields; the key is the path segment as sent (`%20` and all)."""
    gateway, received = push_gateway
    first = spawn("a")
    pushing = spawn("b", "-b", first.udp, "--pushserver", gateway)
    await wait_connected(session, [first, pushing], good=1)
    subscription = {"key": "device-token", "client_id": "phone", "platform": "android", "session_id": "s1"}
    iphone = {"key": "iphone-token", "client_id": "iphone", "platform": "ios", "topic": "org.example.app"}
    alerts = "/key/wake%20up"

    for body in (subscription, iphone):
        async with session.request("SUBSCRIBE", f"{pushing.url}{alerts}", json=body) as response:
            assert response.status == 200 and await read_json(response) == {}
    await asyncio.sleep(0.5)
    async with session.post(f"{first.url}/key/{parse_key('wake%20up').hex()}", json={"data": b64(b"up")}) as response:
        stored = await read_json(response)
    await eventually(lambda: len(received) == 2)
    sent_at = time.time()
    by_platform = {body["notifications"][0]["platform"]: body["notifications"][0] for body in received}
    android, ios = by_platform[2], by_platform[1]
    assert android["tokens"] == ["device-token"] and android["time_to_live"] == 86400 and "topic" not in android
    assert android["data"]["key"] == hashlib.sha1(b"wake%20up").hexdigest()
    assert android["data"]["ids"] == stored["id"] and android["data"]["to"] == "phone"
    assert ios["tokens"] == ["iphone-token"] and ios["topic"] == "org.example.app" and "time_to_live" not in ios
    assert sent_at - 60 < ios["expiration"] - 86400 <= sent_at

    async with session.request("SUBSCRIBE", f"{pushing.url}{alerts}", json=subscription) as response:
        assert response.status == 200
        existing = [json.loads(line) for line in (await response.text()).splitlines()]
    assert [line["id"] for line in existing] == [stored["id"]]
    stats = await read_json(await session.get(f"{pushing.url}/node/stats"))
    assert stats["pushListenersCount"] == 2, "one per device, as OpenDHT counts them"
    assert stats["listenCount"] == 0, "push subscriptions are not listen streams"

    for body in (subscription, iphone):
        async with session.request("UNSUBSCRIBE", f"{pushing.url}{alerts}", json=body) as response:
            assert response.status == 200
    count = len(received)
    await session.post(f"{first.url}{alerts}", json={"data": b64(b"silence")})
    await asyncio.sleep(1.0)
    assert len(received) == count

    for bad in ({}, {"key": 5}):
        async with session.request("SUBSCRIBE", f"{pushing.url}{alerts}", json=bad) as response:
            assert response.status == 400
    async with session.request("SUBSCRIBE", f"{first.url}{alerts}", json=subscription) as response:
        assert response.status == 501 and "pushserver" in (await read_json(response))["err"]


async def test_bad_input_is_answered_and_the_node_keeps_serving(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    url = f"{mesh[0].url}/key/guarded"
    await session.post(url, json={"data": b64(b"kept")})
    cases: list[bytes] = [b"", b"not json", b"[]", b'{"data": 1}', b'{"data": "***"}', b"{" + b" " * 300_000 + b"}"]
    for body in cases:
        async with session.post(url, data=body) as response:
            assert 400 <= response.status < 500
            assert "err" in await read_json(response)
    assert [base64.b64decode(v["data"]) for v in await lines_of(session, url)] == [b"kept"]


async def raw_exchange(url: str, request: bytes) -> tuple[int, bytes, bytes]:
    """Send bytes no HTTP client would send (a bad request line, raw non-UTF-8 bytes) and read the whole
    answer (the request says `Connection: close`, or is one the server closes on): status, head, body."""
    address = URL(url)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


async def test_keys_hash_the_path_segment_as_sent_on_every_route(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    """OpenDHT hashes `/key/a%20b` as SHA-1("a%20b"): the segment is not percent-decoded."""
    await wait_connected(session, mesh, good=2)
    raw, decoded = hashlib.sha1(b"a%20b").hexdigest(), hashlib.sha1(b"a b").hexdigest()
    put = await session.post(f"{mesh[0].url}/key/a%20b", json={"data": b64(b"spaced"), "permanent": True})
    stored = await read_json(put)
    for path in (f"/key/{raw}", f"/{raw}", "/a%20b"):
        assert [line["id"] for line in await lines_of(session, mesh[1].url + path)] == [stored["id"]], path
    assert await lines_of(session, f"{mesh[1].url}/key/{decoded}") == []
    async with session.get(f"{mesh[2].url}/key/a%20b/listen") as response:
        assert (await next_line(response))["id"] == stored["id"]
    async with session.delete(f"{mesh[0].url}/key/{decoded}/{stored['id']}") as response:
        assert response.status == 404, "not the key the value was put under"
    async with session.delete(f"{mesh[0].url}/key/a%20b/{stored['id']}") as response:
        assert response.status == 200

    # Bytes that are not UTF-8 hash as themselves, as OpenDHT's do.
    body = json.dumps({"data": b64(b"raw")}).encode()
    request = b"POST /key/caf\xe9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    status, _, reply = await raw_exchange(mesh[0].url, request + body)
    assert status == 200
    raw_key = hashlib.sha1(b"caf\xe9").hexdigest()
    assert [line["id"] for line in await lines_of(session, f"{mesh[1].url}/key/{raw_key}")] == [json.loads(reply)["id"]]


async def test_paths_with_a_trailing_slash_are_served_as_opendht_serves_them(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    """OpenDHT's router takes a trailing slash on every route: `/key/{h}/` is `/key/{h}`, and `/key/` is
    the legacy `/{h}` of the key "key" (both 200 on OpenDHT 2.4.12)."""
    await wait_connected(session, mesh, good=2)
    mine = await read_json(await session.post(f"{mesh[0].url}/key/slashed/", json={"data": b64(b"s")}))
    named_key = await read_json(await session.post(f"{mesh[0].url}/key", json={"data": b64(b"k")}))
    assert [line["id"] for line in await lines_of(session, f"{mesh[1].url}/key/slashed/")] == [mine["id"]]
    assert [line["id"] for line in await lines_of(session, f"{mesh[1].url}/key/")] == [named_key["id"]]
    async with session.get(f"{mesh[2].url}/key/slashed/listen/") as response:
        assert (await next_line(response))["id"] == mine["id"]
    for path in ("/node/stats/", "/node/info/", "/api/total/"):
        status, _ = await get_json(mesh[0].url, path)
        assert status == 200, path


async def test_requests_the_parser_refuses_get_json_errors_and_are_counted(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    """A 10,000-character key, a 10,000-byte header and bytes that are not HTTP are refused before any
    route sees them: still JSON `{"err"}` with a 4xx, counted as bad requests."""
    url = mesh[0].url
    _, before = await get_json(url, "/")
    long_key = b"GET /key/" + b"k" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    long_header = b"GET /key/k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 10_000 + b"\r\n\r\n"
    for request, expected in ((long_key, 414), (long_header, 431), (b"\x16\x03\x01 not http\r\n\r\n", 400)):
        status, head, body = await raw_exchange(url, request)
        assert status == expected, head
        assert b"Content-Type: application/json" in head and b"Access-Control-Allow-Origin: *" in head
        assert json.loads(body)["err"]
    _, after = await get_json(url, "/")
    counted = {
        name: after["counters"][name] - before["counters"].get(name, 0)
        for name in ("http_bad_requests", "http_malformed")
    }
    assert counted == {"http_bad_requests": 3, "http_malformed": 3}


async def test_405_says_which_methods_the_path_takes(mesh: list[NodeProcess], session: aiohttp.ClientSession) -> None:
    """RFC 9110 §15.5.6: a 405 carries `Allow`, every method of every route the path matches; the body is
    JSON as for every refusal."""
    cases = {
        ("PUT", "/key/k"): {"GET", "POST", "OPTIONS", "SUBSCRIBE", "UNSUBSCRIBE"},
        ("POST", "/key/k/listen"): {"GET", "OPTIONS", "DELETE"},  # DELETE /key/{key}/{value_id} matches too
        ("DELETE", "/api/blob"): {"POST"},
        ("POST", "/node/stats/"): {"GET"},
    }
    for (method, path), methods in cases.items():
        async with session.request(method, mesh[0].url + path) as response:
            assert response.status == 405 and "err" in await read_json(response)
            assert set(response.headers["Allow"].replace(" ", "").split(",")) == methods, path


async def test_listen_count_counts_only_the_clients_listen_streams(
    mesh: list[NodeProcess], session: aiohttp.ClientSession
) -> None:
    """OpenDHT's `listenCount` is its HTTP listen sessions: not the farmer registry's own listeners."""
    url = mesh[0].url
    status, _ = await get_json(url, "/api/online/json")  # opens the registry's view: it listens to its shards
    assert status == 200
    stats = await read_json(await session.get(f"{url}/node/stats"))
    assert stats["listenCount"] == 0 and stats["nodeInfo"]["listeners"] >= 16
    async with session.get(f"{url}/key/one/listen") as first, session.request("LISTEN", f"{url}/two") as second:
        assert first.status == second.status == 200
        stats = await read_json(await session.get(f"{url}/node/stats"))
        assert stats["listenCount"] == 2
    await eventually(lambda: _listen_count(session, url, 0))


async def _listen_count(session: aiohttp.ClientSession, url: str, count: int) -> bool:
    return (await read_json(await session.get(f"{url}/node/stats")))["listenCount"] == count


def test_openapi_document_lists_exactly_the_routes_the_router_serves() -> None:
    node = DhtNode(Identity.generate(), rules=RECORD_RULES)
    try:
        app = create_app(node)
        served = {
            (route.method, table_path(route.resource.canonical))
            for route in app.router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
    finally:
        node.store.close()
    doc = document(ROUTES)
    documented = set()
    for path, item in doc["paths"].items():
        documented |= {(method.upper(), path) for method in item if method.upper() in STANDARD_METHODS}
        documented |= {(method, path) for method in item.get("x-custom-methods", {})}
    assert served == documented
    validate(doc)


async def test_openapi_is_served(mesh: list[NodeProcess], session: aiohttp.ClientSession) -> None:
    doc = await read_json(await session.get(f"{mesh[0].url}/openapi.json"))
    assert doc["openapi"].startswith("3.") and "/key/{key}" in doc["paths"]
