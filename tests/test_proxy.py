"""The proxy routes this milestone serves, over real HTTP against a real in-process mesh."""

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from dhtmesh.api.keys import parse_key
from dhtmesh.api.value_json import owner_from_pem, owner_to_pem, value_from_json, value_to_json
from dhtmesh.crypto import Identity
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.values import Value, sign_value
from dhtmesh.proxy.app import MAX_BODY, ProxyServer
from dhtmesh.testing import eventually

from conftest import MeshFactory
from support import subscribed


@pytest.fixture
async def proxied(make_mesh: MeshFactory) -> AsyncIterator[tuple[list[DhtNode], list[str]]]:
    """Three nodes, each with its proxy on a free port; yields the nodes and their base URLs."""
    nodes = await make_mesh(3)
    proxies = [ProxyServer(node, "127.0.0.1", 0) for node in nodes]
    for proxy in proxies:
        await proxy.start()
    yield nodes, [proxy.url for proxy in proxies]
    for proxy in proxies:
        await proxy.stop()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def post(url: str, body: bytes | str | dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
        async with session.post(url, **kwargs) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json(content_type=None)


async def get_lines(url: str) -> list[dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return [json.loads(line) for line in (await response.text()).splitlines() if line]


def test_keys_are_parsed_as_opendht_parses_them() -> None:
    digest = hashlib.sha1(b"mykey").digest()
    assert parse_key("mykey") == digest
    assert parse_key(digest.hex()) == digest
    assert parse_key(digest.hex().upper()) == digest
    assert parse_key(digest.hex() + "zzz") == digest
    assert parse_key(digest.hex()[:39]) == hashlib.sha1(digest.hex()[:39].encode()).digest()
    assert parse_key("0" * 40) == hashlib.sha1(b"0" * 40).digest()


def test_value_json_round_trips_signed_values_with_a_pem_owner() -> None:
    identity = Identity.generate()
    key = parse_key("k")
    value = sign_value(identity, key, Value(2**64 - 1, b"\x00\xffdata", 3, seq=7, utype="text/plain"))
    document = value_to_json(value)
    assert document["id"] == str(2**64 - 1)
    assert document["owner"].startswith("-----BEGIN PUBLIC KEY-----")
    assert owner_from_pem(owner_to_pem(identity.public_key)) == identity.public_key
    parsed = value_from_json(document)
    assert parsed == value and parsed.verify(key)


async def test_put_on_one_proxy_is_read_on_another(proxied: tuple[list[DhtNode], list[str]]) -> None:
    _, urls = proxied
    status, stored = await post(f"{urls[0]}/key/mykey", {"data": b64(b"hello"), "type": 0, "id": "0"})
    assert status == 200
    assert stored["replicas"] == 2 and int(stored["id"]) > 0
    lines = await get_lines(f"{urls[1]}/key/mykey")
    assert [(line["id"], base64.b64decode(line["data"])) for line in lines] == [(stored["id"], b"hello")]
    assert await get_lines(f"{urls[2]}/key/nothing-here") == []


async def test_node_info_reports_the_node_truthfully(proxied: tuple[list[DhtNode], list[str]]) -> None:
    nodes, urls = proxied
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/node/info"):
            async with session.get(urls[0] + path) as response:
                info = await response.json()
            assert info["node_id"] == nodes[0].node_id.hex()
            assert info["ipv4"]["good"] == 2
            assert info["public_ip"] == "127.0.0.1"


async def test_listen_streams_current_then_new_values_and_frees_its_listener(
    proxied: tuple[list[DhtNode], list[str]],
) -> None:
    nodes, urls = proxied
    await post(f"{urls[0]}/key/stream", {"data": b64(b"before")})
    async with aiohttp.ClientSession() as session, session.get(f"{urls[2]}/key/stream/listen") as response:
        assert response.status == 200
        first = await asyncio.wait_for(response.content.readline(), 5)
        assert base64.b64decode(json.loads(first)["data"]) == b"before"
        await eventually(lambda: subscribed(nodes[2], parse_key("stream"), nodes))
        await post(f"{urls[1]}/key/stream", {"data": b64(b"after")})
        second = await asyncio.wait_for(response.content.readline(), 5)
        assert base64.b64decode(json.loads(second)["data"]) == b"after"
        assert nodes[2].hub.listener_count() == 1
    for _ in range(50):
        if nodes[2].hub.listener_count() == 0:
            break
        await asyncio.sleep(0.05)
    assert nodes[2].hub.listener_count() == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Missing parameters"),
        (b"   ", "Missing parameters"),
        (b"not json", "Incorrect JSON"),
        (b"[]", "JSON object"),
        (b"123", "JSON object"),
        (b'"s"', "JSON object"),
        ({"data": 123}, "data"),
        ({"data": "!!!not-base64***"}, "base64"),
        ({"id": "abc"}, "id"),
        ({"id": -5}, "id"),
        ({"id": str(2**64)}, "id"),
        ({"type": 70000}, "type"),
        ({"type": "0"}, "type"),
        ({"utype": 5}, "utype"),
        ({"owner": "garbage"}, "owner"),
        ({"sig": "AAAA"}, "sig without owner"),
        ({"data": b64(b"x" * (64 * 1024 + 1))}, "larger than"),
    ],
)
async def test_bad_put_bodies_get_a_4xx_json_error_and_lose_nothing(
    proxied: tuple[list[DhtNode], list[str]], body: bytes | dict, message: str
) -> None:
    nodes, urls = proxied
    _, kept = await post(f"{urls[0]}/key/guarded", {"data": b64(b"kept")})
    status, error = await post(f"{urls[0]}/key/guarded", body)
    assert 400 <= status < 500
    assert message in error["err"]
    assert [line["id"] for line in await get_lines(f"{urls[0]}/key/guarded")] == [kept["id"]]
    assert nodes[0].counters.get("http_bad_requests") >= 1


async def test_oversized_body_is_refused_with_413(proxied: tuple[list[DhtNode], list[str]]) -> None:
    _, urls = proxied
    status, error = await post(f"{urls[0]}/key/huge", b"{" + b" " * MAX_BODY + b"}")
    assert status == 413 and error["err"]


async def test_bad_signature_and_conflicting_edits_are_refused(proxied: tuple[list[DhtNode], list[str]]) -> None:
    _, urls = proxied
    alice, mallory = Identity.generate(), Identity.generate()
    key = parse_key("owned")
    original = value_to_json(sign_value(alice, key, Value(9, b"alice's", seq=1)))
    assert (await post(f"{urls[0]}/key/owned", original))[0] == 200

    forged = original | {"data": b64(b"forged")}
    status, error = await post(f"{urls[1]}/key/owned", forged)
    assert (status, error["err"]) == (400, "bad signature")

    stale = value_to_json(sign_value(alice, key, Value(9, b"older", seq=0)))
    status, error = await post(f"{urls[1]}/key/owned", stale)
    assert status == 409 and "stale" in error["err"]

    taken = value_to_json(sign_value(mallory, key, Value(9, b"mine now", seq=5)))
    status, error = await post(f"{urls[2]}/key/owned", taken)
    assert status == 409 and "another owner" in error["err"]

    signed_without_id = value_to_json(sign_value(alice, key, Value(0, b"no id", seq=1)))
    status, error = await post(f"{urls[2]}/key/owned", signed_without_id)
    assert status == 400

    lines = await get_lines(f"{urls[2]}/key/owned")
    assert [base64.b64decode(line["data"]) for line in lines] == [b"alice's"]


async def test_unsigned_values_cannot_be_edited(proxied: tuple[list[DhtNode], list[str]]) -> None:
    _, urls = proxied
    status, _ = await post(f"{urls[0]}/key/fixed", {"id": "42", "data": b64(b"first")})
    assert status == 200
    status, error = await post(f"{urls[1]}/key/fixed", {"id": "42", "data": b64(b"second")})
    assert status == 409 and "cannot be edited" in error["err"]
    assert [base64.b64decode(line["data"]) for line in await get_lines(f"{urls[2]}/key/fixed")] == [b"first"]


async def test_unknown_routes_and_methods_answer_json_errors(proxied: tuple[list[DhtNode], list[str]]) -> None:
    _, urls = proxied
    async with aiohttp.ClientSession() as session:
        for method, path in [("GET", "/a/b/c/d"), ("DELETE", "/key/x"), ("PUT", "/key/x"), ("POST", "/key/x/listen")]:
            async with session.request(method, urls[0] + path) as response:
                assert 400 <= response.status < 500
                assert "err" in await response.json(content_type=None)
