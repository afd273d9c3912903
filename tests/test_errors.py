"""The proxy's one error table (`proxy/errors.py`): every layer's exceptions become a JSON `{"err"}` with
a 4xx or 5xx through the real middleware, and the same refusal has the same status on every route.

A node in this process serves its real proxy on 127.0.0.1: the store quota that makes it refuse is a
setting no `dhtmesh run` flag gives, and the table's test adds a route that raises each root."""

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dhtmesh.client.farmers import signed_headers
from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.crypto.errors import CryptoError
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.errors import NodeError, ServiceError
from dhtmesh.node.records.farmer import next_signed
from dhtmesh.node.records.farmer_events import registered
from dhtmesh.node.storage.store import Quotas
from dhtmesh.proxy.app import ProxyServer, create_app
from dhtmesh.proxy.errors import TABLE, ProxyError, refusal_of
from dhtmesh.proxy.failures import BAD_REQUESTS
from dhtmesh.testing import FAST, start_node

from support import call

ROOTS = (CryptoError, NodeError, ServiceError, ProxyError)


def every_subclass(root: type[BaseException]) -> list[type[BaseException]]:
    found = []
    for kind in root.__subclasses__():
        found += [kind, *every_subclass(kind)]
    return found


def test_every_layer_root_and_every_kind_under_it_has_an_error_status() -> None:
    assert set(ROOTS) <= TABLE.keys()
    for kind in [*ROOTS, *(kind for root in ROOTS for kind in every_subclass(root))]:
        entry = refusal_of(Exception.__new__(kind))
        assert entry is not None, kind
        if isinstance(entry.status, int):  # else by the exception's fields (a store's verdict)
            assert 400 <= entry.status < 600, kind


@pytest.fixture
async def node() -> AsyncIterator[DhtNode]:
    # Room for nothing of its own: every put through this node's proxy is refused by its store's quota.
    started = await start_node(replace(FAST, quotas=Quotas(max_local_bytes=1)))
    try:
        yield started
    finally:
        await started.stop()


async def test_every_layer_root_raised_by_a_handler_is_a_json_error_and_counted(node: DhtNode) -> None:
    app = create_app(node)

    async def raising(request: web.Request) -> web.Response:
        raise {root.__name__: root for root in ROOTS}[request.match_info["root"]]("refused for the test")

    app.router.add_get("/raise/{root}", raising)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            for root in ROOTS:
                before = node.counters.get(BAD_REQUESTS)
                status, body = await call(session, "GET", str(server.make_url(f"/raise/{root.__name__}")))
                assert 400 <= status < 600 and body == {"err": "refused for the test"}, (root, status, body)
                assert node.counters.get(BAD_REQUESTS) == before + 1
    finally:
        await server.close()


async def test_a_full_store_is_the_same_status_on_post_key_and_on_api_register(node: DhtNode) -> None:
    proxy = ProxyServer(node, "127.0.0.1", 0)
    await proxy.start()
    try:
        async with aiohttp.ClientSession(proxy.url) as session:
            key_status, key_body = await call(session, "POST", f"{proxy.url}/key/full", {"data": "aGVsbG8="})
            farmer = Identity.generate()
            payout = node_address(farmer.node_id)
            path = f"/api/register/{farmer.node_id.hex()}/{payout}"
            signed = next_signed(farmer, None, registered(farmer.node_id, payout, int(time.time())))
            async with session.get(path, headers=signed_headers(farmer, path, signed, node.node_id)) as response:
                api_status, api_body = response.status, await response.json()
    finally:
        await proxy.stop()
    assert key_body == {"err": "storage quota exceeded"}
    assert api_body == {"err": "Registration Failed: storage quota exceeded."}
    assert key_status == api_status == 409  # a quota, like a policy refusal: this node will refuse it again
