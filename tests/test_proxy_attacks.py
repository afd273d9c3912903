"""Three attacks found on a running mesh, each replayed against a real proxy over real HTTP:
A. the node's key as a signing oracle (`/sign`, `/encrypt`), reachable from a web page's script;
B. unbounded listen streams and push subscriptions from one client;
C. malformed requests and handler bugs that write a traceback per request to the log."""

import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.audit import AuditEntry, AuditLog, Outcome, audits_key
from dhtmesh.node.records.blob import Manifest, blob_key, blob_value_id
from dhtmesh.node.records.farmer import FARMER_VALUE_TYPE, FarmerRecord, farmer_key, farmer_value_id
from dhtmesh.node.records.holding import Holding, chunk_key
from dhtmesh.node.records.rules import RULES
from dhtmesh.node.values.types import AUDIT_TYPE, BLOB_MANIFEST_TYPE, HOLDING_TYPE
from dhtmesh.proxy.app import ProxyServer

from support import start_node

Serve = Callable[..., Awaitable[tuple[DhtNode, str]]]
ANSWER_TIMEOUT = aiohttp.ClientTimeout(total=10)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`await serve(**proxy_options)`: a fresh node with its proxy on a free port; yields (node, url)."""
    started: list[tuple[DhtNode, ProxyServer]] = []

    async def start(**options: object) -> tuple[DhtNode, str]:
        node = await start_node()
        proxy = ProxyServer(node, "127.0.0.1", 0, **options)  # type: ignore[arg-type]
        await proxy.start()
        started.append((node, proxy))
        return node, proxy.url

    yield start
    for node, proxy in started:
        await proxy.stop()
        await node.stop()


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: object = None, origin: str | None = None
) -> tuple[int, dict]:
    """One request; the body (a dict as JSON text, as curl -d sends it) and the JSON answer."""
    headers = {"Origin": origin} if origin else {}
    data = json.dumps(body) if body is not None else None
    # A bounded wait: a stream that should have been refused fails the test instead of hanging it.
    async with session.request(method, url, data=data, headers=headers, timeout=ANSWER_TIMEOUT) as response:
        text = await response.text()
        return response.status, json.loads(text) if text and response.content_type == "application/json" else {}


async def values_under(session: aiohttp.ClientSession, url: str, key_path: str) -> list[dict]:
    async with session.get(f"{url}/key/{key_path}") as response:
        return [json.loads(line) for line in (await response.text()).splitlines() if line]


# ---- A. the node's key is not a signing oracle ------------------------------------------------------


def records_for(node_id: bytes) -> dict[int, tuple[bytes, int, bytes]]:
    """A well-formed record of every reserved type that the node's own key would make valid: its farmer
    record, a holding of a chunk it lacks, an audit log failing another farmer, a manifest. Each as
    (key, value id, data)."""
    now = int(time.time())
    root, blob_id, victim = os.urandom(32), os.urandom(32), os.urandom(20)
    entry = AuditEntry(root, blob_id, 1000, os.urandom(16), (0,), Outcome.FAILED, now)
    manifest = Manifest((root,), (1000,))
    own_id = farmer_value_id(node_id)
    farmer = FarmerRecord(node_id, node_address(node_id), now, now)
    return {
        FARMER_VALUE_TYPE: (farmer_key(node_id), own_id, farmer.encode()),
        HOLDING_TYPE: (chunk_key(root), own_id, Holding(node_id, root, 1000, blob_id, now).encode()),
        AUDIT_TYPE: (audits_key(victim), own_id, AuditLog(node_id, victim, (entry,)).encode()),
        BLOB_MANIFEST_TYPE: (blob_key(manifest.blob_id), blob_value_id(manifest.blob_id), manifest.encode()),
    }


async def test_sign_and_encrypt_refuse_every_record_type(serve: Serve) -> None:
    node, url = await serve()
    records = records_for(node.node_id)
    assert records.keys() == RULES.keys(), "every reserved type is tried"
    recipient = Identity.generate().public_key.hex()
    async with aiohttp.ClientSession() as session:
        for value_type, (key, value_id, data) in records.items():
            body = {"data": b64(data), "type": value_type, "id": str(value_id)}
            for route, extra in (("sign", {}), ("encrypt", {"to": recipient})):
                status, answer = await call(session, "POST", f"{url}/key/{key.hex()}/{route}", body | extra)
                assert status == 400, (route, value_type, answer)
                assert "signed only by the node's own services" in answer["err"]
            assert await values_under(session, url, key.hex()) == [], "nothing was signed or stored"
        assert node.counters.get("http_bad_requests") == 2 * len(records)
        status, _ = await call(session, "POST", f"{url}/key/plain/sign", {"data": b64(b"an ordinary value")})
        assert status == 200, "other types are still signed on request"
