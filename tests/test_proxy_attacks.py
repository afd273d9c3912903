"""Three attacks found on a running mesh, each replayed against a real proxy over real HTTP:
A. the node's key as a signing oracle (`/sign`, `/encrypt`), reachable from a web page's script;
B. unbounded listen streams and push subscriptions from one client;
C. malformed requests and handler bugs that write a traceback per request to the log."""

import asyncio
import base64
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.records import RESERVED_TYPES, outvote
from dhtmesh.node.records.account import ACCOUNT_TYPE, MEMLIMIT, OPSLIMIT, AccountRecord, account_key
from dhtmesh.node.records.audit import AUDIT_TYPE, AuditEntry, AuditLog, Outcome, audits_key
from dhtmesh.node.records.blob import BLOB_MANIFEST_TYPE, Manifest, blob_key, blob_value_id
from dhtmesh.node.records.farmer import FARMER_VALUE_TYPE, FarmerRecord, farmer_key, farmer_value_id
from dhtmesh.node.records.holding import HOLDING_TYPE, Holding, chunk_key
from dhtmesh.node.records.job import (
    BATCH,
    BATCH_TYPE,
    JOB,
    JOB_TYPE,
    LEASE,
    LEASE_TYPE,
    RESULT,
    RESULT_TYPE,
    BatchRecord,
    JobRecord,
    JobSpec,
    LeaseRecord,
    ResultRecord,
    SliceResult,
    job_id_of,
)
from dhtmesh.node.records.kind import value_id_of
from dhtmesh.node.records.outvote import OUTVOTE_TYPE, Outvote, OutvoteLog
from dhtmesh.node.records.stream import STREAM_TYPE, STREAMS, StreamRecord, stream_id
from dhtmesh.proxy.app import LISTENS_PER_CLIENT
from dhtmesh.proxy.push import SUBSCRIPTIONS_PER_CLIENT
from dhtmesh.testing import NodeProcess

from conftest import Serve
from support import call, from_address, get_json

Spawn = Callable[..., NodeProcess]
ALLOWED = "http://allowed.example"
FOREIGN = "http://evil.example"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def values_under(session: aiohttp.ClientSession, url: str, key_path: str) -> list[dict]:
    async with session.get(f"{url}/key/{key_path}") as response:
        return [json.loads(line) for line in (await response.text()).splitlines() if line]


# ---- A. the node's key is not a signing oracle ------------------------------------------------------


def records_for(node_id: bytes, public_key: bytes) -> dict[int, tuple[bytes, int, bytes]]:
    """A well-formed record of every reserved type that the node's own key would make valid: its farmer
    record, a holding of a chunk it lacks, an audit log failing another farmer, a manifest, a job of
    its own with a batch, a lease and a forged result, an outvote of another worker, an account bound to
    its key, a stream it created. Each as (key, value id, data)."""
    now = int(time.time())
    root, blob_id, victim = os.urandom(32), os.urandom(32), os.urandom(20)
    entry = AuditEntry(root, blob_id, 1000, os.urandom(16), (0,), Outcome.FAILED, now)
    manifest = Manifest((root,), (1000,))
    own_id = farmer_value_id(node_id)
    farmer = FarmerRecord(node_id, node_address(node_id), now, now)
    spec = JobSpec("x => x", b"[]")
    nonce = os.urandom(16)
    job = JobRecord(job_id_of(node_id, nonce), node_id, nonce, now, spec, (1,), updated=now)
    batch = BatchRecord(job.job_id, node_id, 0, now, (b"1",))
    lease = LeaseRecord(node_id, job.job_id, 0, now * 1000, now * 1000 + 5000)
    result = ResultRecord(node_id, job.job_id, 0, 0, now, (SliceResult(1, b"99", None, 1),))
    outvoted = OutvoteLog(node_id, victim, (Outvote(job.job_id, 1, now),))
    account = AccountRecord(f"n{node_id.hex()[:8]}", public_key, os.urandom(16), OPSLIMIT, MEMLIMIT, now)
    stream = StreamRecord("oracle", node_id, ((node_id, "127.0.0.1", 4222),), now)
    return {
        ACCOUNT_TYPE: (account_key(account.name), value_id_of(account_key(account.name)), account.encode()),
        STREAM_TYPE: (STREAMS.key_for(stream_id(stream.sid)), value_id_of(stream_id(stream.sid)), stream.encode()),
        JOB_TYPE: (JOB.key_for(job), value_id_of(job.job_id), job.encode()),
        BATCH_TYPE: (BATCH.key_for(batch), value_id_of(BATCH.id_of(batch)), batch.encode()),
        LEASE_TYPE: (LEASE.key_for(lease), value_id_of(LEASE.id_of(lease)), lease.encode()),
        RESULT_TYPE: (RESULT.key_for(result), value_id_of(RESULT.id_of(result)), result.encode()),
        OUTVOTE_TYPE: (outvote.KIND.key_for(outvoted), own_id, outvoted.encode()),
        FARMER_VALUE_TYPE: (farmer_key(node_id), own_id, farmer.encode()),
        HOLDING_TYPE: (chunk_key(root), own_id, Holding(node_id, root, 1000, blob_id, now).encode()),
        AUDIT_TYPE: (audits_key(victim), own_id, AuditLog(node_id, victim, (entry,)).encode()),
        BLOB_MANIFEST_TYPE: (blob_key(manifest.blob_id), blob_value_id(manifest.blob_id), manifest.encode()),
    }


async def test_sign_and_encrypt_refuse_every_record_type(serve: Serve) -> None:
    node, url = await serve()
    records = records_for(node.node_id, node.identity.public_key)
    assert records.keys() == RESERVED_TYPES, "every reserved type is tried"
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


# ---- A. state changes only from allowed web origins -----------------------------------------------

# Every way to change state, as (method, path, body): each method the proxy routes and two it does not.
STATE_CHANGES = [
    ("POST", "/key/guarded", {"data": b64(b"x")}),
    ("POST", "/key/guarded/sign", {"data": b64(b"x")}),
    ("POST", "/key/guarded/encrypt", {"data": b64(b"x"), "to": "00" * 32}),
    ("POST", "/guarded", {"data": b64(b"x")}),
    ("DELETE", "/key/guarded/12345", None),
    ("LISTEN", "/guarded", None),
    ("SUBSCRIBE", "/key/guarded", {"key": "token", "client_id": "c"}),
    ("UNSUBSCRIBE", "/key/guarded", {"key": "token", "client_id": "c"}),
    ("POST", "/api/blob", None),
    ("PUT", "/key/guarded", None),
    ("PATCH", "/key/guarded", None),
]
FARMER_ID = "ab" * 20
FARMER_GETS = [
    f"/api/register/{FARMER_ID}",
    f"/api/register/{FARMER_ID}/{node_address(bytes.fromhex(FARMER_ID))}",
    f"/api/ping/{FARMER_ID}",
    f"/api/height/{FARMER_ID}/10",
    f"/api/bandwidth/{FARMER_ID}/1/2",
    f"/api/ping/{FARMER_ID}/",  # every route is served with a trailing slash too: guarded all the same
]


async def test_foreign_origins_cannot_change_state_and_everyone_can_read(serve: Serve) -> None:
    node, url = await serve(allowed_origins=frozenset({ALLOWED}))
    async with aiohttp.ClientSession() as session:
        refused = 0
        for origin in (FOREIGN, "null", ALLOWED + ":8080", "https://allowed.example"):
            for method, path, body in STATE_CHANGES:
                status, answer = await call(session, method, url + path, body, origin)
                assert status == 403 and origin in answer["err"], (origin, method, path)
                refused += 1
            for path in FARMER_GETS:
                status, answer = await call(session, "GET", url + path, None, origin)
                assert status == 403 and "err" in answer, (origin, path)
                refused += 1
        assert node.counters.get("http_origin_refused") == refused
        assert await values_under(session, url, "guarded") == [], "nothing was stored"

        for origin in (ALLOWED, None):  # an allowed page, and a native client (no Origin)
            status, _ = await call(session, "POST", f"{url}/key/guarded", {"data": b64(b"ok")}, origin)
            assert status == 200
            for path in FARMER_GETS:
                status, answer = await call(session, "GET", url + path, None, origin)
                assert status == 401, "past the origin check, stopped by the farmer's signature"
        for path in ("/key/guarded", "/node/info", "/api/online/json", "/key/guarded/options"):
            async with session.get(url + path, headers={"Origin": FOREIGN}) as response:
                assert response.status == 200, path
                assert response.headers["Access-Control-Allow-Origin"] == "*"
        status, _ = await call(session, "OPTIONS", f"{url}/key/guarded", None, FOREIGN)
        assert status == 200, "a preflight is answered: the POST that follows is what is refused"
        assert node.counters.get("http_origin_refused") == refused


ATTACK_PAGE = """<!doctype html><html><body>
<pre id="fetch">pending</pre><pre id="form">pending</pre>
<iframe name="sink" onload="if (this.dataset.sent) document.getElementById('form').textContent = 'loaded'"></iframe>
<form id="csrf" method="POST" action="{proxy}/key/{key}-form" enctype="text/plain" target="sink">
<input name='{{"data":"Zm9ybQ==","pad":"' value='"}}'></form>
<script>
document.querySelector("iframe").dataset.sent = "1";
document.getElementById("csrf").submit();
const plain = {{"Content-Type": "text/plain"}};  // a "simple" request: no preflight
fetch("{proxy}/key/{key}/sign", {{method: "POST", body: '{{"data":"c2lnbmVk"}}', headers: plain}})
  .then(async reply => {{ document.getElementById("fetch").textContent = reply.status + " " + await reply.text(); }})
  .catch(error => {{ document.getElementById("fetch").textContent = "failed " + error; }});
</script></body></html>"""


@pytest.fixture
async def attack_site(spawn: Spawn) -> AsyncIterator[tuple[NodeProcess, int]]:
    """A web server on its own port serving ATTACK_PAGE (`/attack?key=K`), and a node that allows
    pages from http://localhost:PORT, not from http://127.0.0.1:PORT: one server, two origins."""
    proxy: list[str] = []

    async def page(request: web.Request) -> web.Response:
        text = ATTACK_PAGE.format(proxy=proxy[0], key=request.query["key"])
        return web.Response(text=text, content_type="text/html")

    app = web.Application()
    app.router.add_get("/attack", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    node = spawn("victim", "--allow-origin", f"http://localhost:{port}")
    proxy.append(node.url)
    yield node, port
    await runner.cleanup()


async def browse(url: str, profile: Path) -> str:
    """The DOM of `url` after headless Chromium ran its scripts (5 s of virtual time, network waits
    not counted)."""
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: scripts/env.sh installs it with apt-get")
        pytest.skip("chromium (Debian package) is not installed")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    flags += [f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url]
    process = await asyncio.create_subprocess_exec(
        browser, *flags, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, start_new_session=True
    )
    try:
        dom, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    return dom.decode()


def text_of(dom: str, element_id: str) -> str:
    start = dom.index(f'<pre id="{element_id}">') + len(f'<pre id="{element_id}">')
    return dom[start : dom.index("</pre>", start)]


async def test_a_web_page_in_a_real_browser_cannot_make_the_node_sign(
    attack_site: tuple[NodeProcess, int], tmp_path: Path
) -> None:
    node, port = attack_site
    foreign = await browse(f"http://127.0.0.1:{port}/attack?key=stolen", tmp_path / "profile-foreign")
    assert text_of(foreign, "fetch").startswith("403 "), foreign  # the page may read why (ACAO *)
    assert "may not change state" in text_of(foreign, "fetch")
    assert text_of(foreign, "form") == "loaded", "the form was posted and answered"
    async with aiohttp.ClientSession() as session:
        assert await values_under(session, node.url, "stolen") == [], "nothing was signed"
        assert await values_under(session, node.url, "stolen-form") == [], "nothing was stored"
    _, info = await get_json(node.url, "/node/info")
    assert info["counters"]["http_origin_refused"] == 2

    allowed = await browse(f"http://localhost:{port}/attack?key=welcome", tmp_path / "profile-allowed")
    assert text_of(allowed, "fetch").startswith("200 "), allowed
    async with aiohttp.ClientSession() as session:
        (signed,) = await values_under(session, node.url, "welcome")
        assert "sig" in signed, "the allowed page's value was signed by the node"
        (posted,) = await values_under(session, node.url, "welcome-form")
        assert base64.b64decode(posted["data"]) == b"form"
    _, info = await get_json(node.url, "/node/info")
    assert info["counters"]["http_origin_refused"] == 2


# ---- B. per-client caps on listen streams and push subscriptions ------------------------------------


async def listen_count(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/node/stats") as response:
        return (await response.json())["listenCount"]


async def test_listen_streams_are_capped_per_client_address(serve: Serve) -> None:
    node, url = await serve()
    async with from_address("127.0.0.1") as session:
        streams = []
        try:
            for index in range(LISTENS_PER_CLIENT):  # both forms share the cap
                method, path = ("LISTEN", "/news") if index % 2 else ("GET", "/key/news/listen")
                streams.append(await session.request(method, url + path))
                assert streams[-1].status == 200
            for method, path in (("GET", "/key/other/listen"), ("LISTEN", "/other")):
                status, answer = await call(session, method, url + path)
                assert status == 429 and "listen streams" in answer["err"]
            assert node.counters.get("http_listens_refused") == 2

            streams.pop().close()
            for _ in range(500):  # until the server has seen the connection close
                if await listen_count(session, url) == LISTENS_PER_CLIENT - 1:
                    break
                await asyncio.sleep(0.02)
            streams.append(await session.get(f"{url}/key/news/listen"))
            assert streams[-1].status == 200, "a closed stream frees its slot"

            async with from_address("127.0.0.2") as neighbour, neighbour.get(f"{url}/key/news/listen") as response:
                assert response.status == 200, "another address is another client"
        finally:
            for stream in streams:
                stream.close()
    assert node.counters.get("http_listens_refused") == 2


async def test_push_subscriptions_are_capped_per_client_address(serve: Serve) -> None:
    # No value is ever put, so the gateway is never called.
    node, url = await serve(push_gateway="http://127.0.0.1:9")
    subscription = {"client_id": "phone", "platform": "android"}
    async with from_address("127.0.0.1") as session:
        for index in range(SUBSCRIPTIONS_PER_CLIENT):
            status, _ = await call(session, "SUBSCRIBE", f"{url}/key/k{index}", {"key": "token"} | subscription)
            assert status == 200
        status, answer = await call(session, "SUBSCRIBE", f"{url}/key/one-more", {"key": "token"} | subscription)
        assert status == 429 and "push subscriptions" in answer["err"]
        assert node.counters.get("http_subscriptions_refused") == 1
        renewal = {"key": "token", "refresh": True} | subscription
        assert (await call(session, "SUBSCRIBE", f"{url}/key/k0", renewal))[0] == 200, "renewing is not new"

        assert (await call(session, "UNSUBSCRIBE", f"{url}/key/k0", {"key": "token"} | subscription))[0] == 200
        status, _ = await call(session, "SUBSCRIBE", f"{url}/key/one-more", {"key": "token"} | subscription)
        assert status == 200, "an unsubscribed slot is free again"
    async with from_address("127.0.0.2") as neighbour:
        status, _ = await call(neighbour, "SUBSCRIBE", f"{url}/key/theirs", {"key": "other"} | subscription)
        assert status == 200, "another address is another client"
    assert node.counters.get("http_subscriptions_refused") == 1


# ---- C. what cannot flood the log -------------------------------------------------------------------


def tls_client_hello() -> bytes:
    """The first bytes a TLS client sends (a fresh ClientHello each time)."""
    sent = ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), sent, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass  # waiting for a ServerHello that never comes
    return sent.read()


NOT_HTTP = [
    b"hello world\r\n\r\n",
    b"\x00\xff\xfe garbage \x01\r\n\r\n",
    b"GET / HTTP/1.1\r\nthis header has no colon\r\n\r\n",
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /node/info HTTP/1.1\r\nHost: x\r\n\r\nnot a second request\r\n\r\n",
]


def send_raw(url: str, data: bytes) -> bytes:
    """Send `data` on a new connection to the proxy and read until the server closes it."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    received = b""
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(data)
        while chunk := connection.recv(65536):
            received += chunk
    return received


async def test_malformed_requests_are_counted_not_logged(spawn: Spawn) -> None:
    node = spawn("target")  # default logging: warnings and errors reach stderr
    rounds = 10
    for _ in range(rounds):
        for data in [tls_client_hello(), *NOT_HTTP]:
            answer = await asyncio.to_thread(send_raw, node.url, data)
            head, _, body = answer[answer.rindex(b"HTTP/1.") :].partition(b"\r\n\r\n")  # the refusal comes last
            assert 400 <= int(head.split()[1]) < 500 and b"Content-Type: application/json" in head, answer[:300]
            assert json.loads(body)["err"]
    status, info = await get_json(node.url, "/node/info")
    assert status == 200, "the proxy keeps serving"
    assert info["counters"]["http_malformed"] == rounds * (1 + len(NOT_HTTP))
    async with aiohttp.ClientSession() as session:
        assert (await call(session, "POST", f"{node.url}/key/still", {"data": b64(b"up")}))[0] == 200
    node.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.process.wait, 15) == 0
    assert node.process.stderr is not None
    log = node.process.stderr.read()
    assert "Traceback" not in log and "level=error" not in log and "level=critical" not in log, log


async def test_a_handler_bug_answers_json_500_and_is_logged_once(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    node, url = await serve()
    node.store.close()  # a real failure below the proxy: every read of the store now raises
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        for path in ("/node/stats", "/key/broken", "/node/stats", "/key/broken", "/node/stats"):
            method, body = ("POST", {"data": b64(b"x")}) if path.startswith("/key") else ("GET", None)
            status, answer = await call(session, method, url + path, body)
            assert (status, answer) == (500, {"err": "internal error"})
        for _ in range(3):  # a stream that fails after its status was sent can only be cut short
            async with session.get(f"{url}/key/anything") as response:
                assert response.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
    assert node.counters.get("http_internal_errors") == 8
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None, "one traceback per kind of error a minute"
    assert "internal error" in errors[0].getMessage()
