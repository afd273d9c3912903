"""Mesh-wide accounts and tokens (issue 17) over real `dhtmesh run` processes on loopback: `dhtmesh user
add` through node A, `POST /token` on node B, the token checked on node C (a node in this process,
joined to the mesh, serving one route that runs `authenticated` as the stream routes will), ptgctl's
own login, and the attacks: forged and expired tokens, floods of logins and lookups, hostile account
records, and the password never written to a node's files.

The mesh (A, B) and the account `alice` are made once; every test that drains a per-host budget has
a node of its own.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dhtmesh.api.value_json import value_from_json, value_to_json
from dhtmesh.client import Client
from dhtmesh.client.accounts import account_value
from dhtmesh.crypto import Identity
from dhtmesh.node.accounts.errors import BadToken
from dhtmesh.node.accounts.service import Accounts
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.account import decode_account, identity_for, signed_account
from dhtmesh.node.stats import ErrorLog
from dhtmesh.proxy.app import json_errors
from dhtmesh.proxy.failures import INTERNAL_ERRORS
from dhtmesh.proxy.route import ACCOUNTS, ERRORS, FAILURE_LABELS, NODE, STATS
from dhtmesh.proxy.stats import RequestStats
from dhtmesh.proxy.token_routes import authenticated
from dhtmesh.testing import NodeProcess, ProcessGroup, eventually, run_cli, start_node

pytestmark = pytest.mark.process

PASSWORD = "pw-" + secrets.token_hex(12)  # random: grepping a node's files for it finds only a leak
THIRTY_DAYS = 30 * 86400


@dataclass
class Mesh:
    group: ProcessGroup
    a: NodeProcess
    b: NodeProcess
    added: subprocess.CompletedProcess  # `dhtmesh user add alice` through A


async def joined(url: str) -> bool:
    async with Client(url) as client:
        return (await client.info())["ipv4"]["good"] >= 1


def user_add(url: str, name: str, password: str) -> subprocess.CompletedProcess:
    return run_cli("user", "add", "--url", url, name, env={"DHTMESH_PASSWORD": password, "DHTMESH_URL": ""})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    group = ProcessGroup(tmp_path_factory.mktemp("accounts"))
    try:
        a = group.launch("a")
        b = group.launch("b", "-b", a.udp)
        asyncio.run(eventually(lambda: joined(b.url)))
        yield Mesh(group, a, b, user_add(a.url, "alice", PASSWORD))
    finally:
        group.stop()


@dataclass
class NodeC:
    node: DhtNode
    accounts: Accounts
    url: str


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"user": await authenticated(request)})


@pytest.fixture
async def node_c(mesh: Mesh) -> AsyncIterator[NodeC]:
    """A node joined to the mesh, serving `GET /whoami` through the proxy's error middleware."""
    node = await start_node()
    accounts = Accounts(node)
    app = web.Application(middlewares=[json_errors])
    app[NODE], app[ACCOUNTS], app[STATS] = node, accounts, RequestStats()
    app[ERRORS], app[FAILURE_LABELS] = ErrorLog(node.counters, INTERNAL_ERRORS), {}
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await node.join([mesh.a.address])
        port = runner.addresses[0][1]
        yield NodeC(node, accounts, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
        await accounts.close()
        await node.stop()


async def login(url: str, name: str = "alice", password: str = PASSWORD, query: str = "") -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{url}/token{query}", data={"username": name, "password": password})
        await response.read()
        return response


async def token_of(url: str, query: str = "") -> str:
    response = await login(url, query=query)
    assert response.status == 200, await response.text()
    return (await response.json())["access_token"]


async def asked(url: str, **options: object) -> tuple[int, dict, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async with session.get(f"{url}/whoami", **options) as response:  # type: ignore[arg-type]
            return response.status, await response.json(), response


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, claims: dict, sign=lambda message: b"") -> str:
    message = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{message}.{b64(sign(message.encode()))}"


def minted(identity: Identity, **claims: object) -> str:
    now = int(time.time())
    body = {"sub": "alice", "iat": now, "exp": now + 600, "jti": secrets.token_hex(8)} | claims
    return jwt.encode(body, Ed25519PrivateKey.from_private_bytes(bytes(identity.signing_key)), algorithm="EdDSA")


async def alice_identity(url: str) -> tuple[Identity, bytes]:
    """Alice's key, derived here from her password and her public record; and her public key."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v0/users/alice") as response:
            record = decode_account(value_from_json(await response.json()).data)
    return identity_for(record, PASSWORD), record.public_key


# ---- accounts and logins ------------------------------------------------------------------------


def test_user_add_publishes_the_derived_key_never_the_password(mesh: Mesh) -> None:
    assert mesh.added.returncode == 0, mesh.added.stderr
    answer = json.loads(mesh.added.stdout)
    assert answer["name"] == "alice" and len(bytes.fromhex(answer["public_key"])) == 32
    again = user_add(mesh.b.url, "alice", PASSWORD)  # the same password through another node: published again
    assert again.returncode == 0 and json.loads(again.stdout) == answer, again.stderr
    taken = user_add(mesh.b.url, "alice", PASSWORD + "x")
    assert taken.returncode == 1 and "alice is taken" in taken.stderr, taken.stderr
    bad = run_cli("user", "add", "--url", mesh.a.url, "no spaces", env={"DHTMESH_PASSWORD": "x"})
    assert bad.returncode != 0 and "user name" in bad.stderr


async def test_a_login_on_another_node_returns_ptgs_token_and_cookie(mesh: Mesh) -> None:
    response = await login(mesh.b.url)
    assert response.status == 200
    document = await response.json()
    token = document["access_token"]
    assert document == {"access_token": token, "token_type": "bearer"}
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"sub", "iat", "exp", "jti"} and claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == THIRTY_DAYS and abs(claims["iat"] - time.time()) < 600
    cookie = response.headers["Set-Cookie"]
    assert cookie == f'authorization="Bearer {token}"; HttpOnly; Max-Age=2591940; Path=/; SameSite=lax'
    _, public_key = await alice_identity(mesh.b.url)
    assert jwt.decode(token, Ed25519PublicKey.from_public_bytes(public_key), algorithms=["EdDSA"])["sub"] == "alice"


async def test_exp_sets_the_tokens_and_cookies_life_capped_as_ptg_caps_it(mesh: Mesh) -> None:
    short = await login(mesh.a.url, query="?exp=5")
    claims = jwt.decode((await short.json())["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 5 and "Max-Age=5;" in short.headers["Set-Cookie"]
    long = await login(mesh.a.url, query="?exp=999999999")
    claims = jwt.decode((await long.json())["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 2591940 and "Max-Age=2591940;" in long.headers["Set-Cookie"]
    assert (await login(mesh.a.url, query="?exp=soon")).status == 400


@pytest.mark.parametrize(
    ("name", "password"),
    [("alice", "wrong"), ("nobody", PASSWORD), ("", ""), ("a b", "x"), ("x" * 65, "x")],
    ids=["wrong-password", "unknown-user", "empty", "bad-name", "long-name"],  # the same in every xdist worker
)
async def test_a_wrong_password_or_unknown_user_is_401_bearer(mesh: Mesh, name: str, password: str) -> None:
    response = await login(mesh.b.url, name, password)
    assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert await response.json() == {"err": "Incorrect username or password"}


async def test_ping_is_open(mesh: Mesh) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{mesh.a.url}/ping") as response:
            assert response.status == 200 and await response.json() is True


def test_ptgctl_logs_in_and_keeps_the_cookie(mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ptgctl

    monkeypatch.setenv("HOME", str(tmp_path))
    api = ptgctl.API(url=mesh.b.url, username="alice", password=PASSWORD)
    assert api.token and api.token["sub"] == "alice" and api.token.header["alg"] == "EdDSA"
    assert "authorization" in (tmp_path / ".ptg.cjar").read_text()


# ---- tokens on another node ---------------------------------------------------------------------


async def test_a_token_from_b_is_accepted_on_c_from_each_source_in_ptgs_order(mesh: Mesh, node_c: NodeC) -> None:
    token = await token_of(mesh.b.url)
    bearer = {"Authorization": f"Bearer {token}"}
    cookie = {"Cookie": f'authorization="Bearer {token}"'}
    for options in ({"params": {"token": token}}, {"headers": bearer}, {"headers": cookie}):
        status, document, _ = await asked(node_c.url, **options)
        assert (status, document) == (200, {"user": "alice"}), options
    # ptg's order: the query before the header, the header before the cookie; a bad first source is final
    status, _, _ = await asked(node_c.url, params={"token": "garbage"}, headers=bearer)
    assert status == 401
    status, _, _ = await asked(node_c.url, headers={"Authorization": "Bearer garbage", **cookie})
    assert status == 401
    status, document, response = await asked(node_c.url)
    assert (status, document) == (401, {"err": "Not authenticated"})
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_verify_checks_once_then_answers_from_its_cache(mesh: Mesh, node_c: NodeC) -> None:
    token = await token_of(mesh.a.url)
    assert not node_c.accounts.known(token)
    assert await node_c.accounts.verify(token) == "alice"
    assert node_c.accounts.known(token) and await node_c.accounts.verify(token) == "alice"
    with pytest.raises(BadToken, match="over 8192 bytes"):
        await node_c.accounts.verify(token + "A" * 8192)  # refused before it is decoded
    for text in ("", "é.é.é", "\udc80.a.b", token[:-1] + "\udc80"):
        with pytest.raises(BadToken):
            await node_c.accounts.verify(text)


async def test_an_unknown_user_costs_one_lookup_per_minute_not_one_per_token(node_c: NodeC) -> None:
    stranger = Identity.generate()
    gets = node_c.node.counters.get("gets")
    for _ in range(3):
        with pytest.raises(BadToken, match="unknown user"):
            await node_c.accounts.verify(minted(stranger, sub="ghost"))
    assert node_c.node.counters.get("gets") == gets + 1


async def test_an_expired_token_is_refused(mesh: Mesh, node_c: NodeC) -> None:
    token = await token_of(mesh.b.url, "?exp=1")
    claims = jwt.decode(token, options={"verify_signature": False})
    await eventually(lambda: time.time() > claims["exp"] + 1, within=5)
    status, document, _ = await asked(node_c.url, params={"token": token})
    assert status == 401 and "expired" in document["err"], document


async def test_forged_tokens_are_refused(mesh: Mesh, node_c: NodeC) -> None:
    alice, public_key = await alice_identity(mesh.a.url)
    assert (await asked(node_c.url, params={"token": minted(alice)}))[0] == 200  # the test's own minting is right
    assert user_add(mesh.a.url, "eve", "eves-password").returncode == 0
    eve = identity_for(decode_account(await _record(mesh.a.url, "eve")), "eves-password")
    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 600, "jti": "x"}
    valid = minted(alice)
    header, _, signature = valid.split(".")
    forgeries = {
        "alg none": hand_made({"alg": "none", "typ": "JWT"}, claims),
        "HS256 keyed with the public key": hand_made(
            {"alg": "HS256", "typ": "JWT"}, claims, lambda m: hmac.new(public_key, m, hashlib.sha256).digest()
        ),
        "eve's key, alice's name": minted(eve),
        "tampered claims": f"{header}.{b64(json.dumps(claims | {'exp': now + 10**7}).encode())}.{signature}",
        "expired": minted(alice, iat=now - 1000, exp=now - 10),
        "issued in the future": minted(alice, iat=now + 3600, exp=now + 7200),
        "too long a life": minted(alice, exp=now + 10 * THIRTY_DAYS),
        "no exp": jwt.encode({"sub": "alice", "iat": now, "jti": "x"}, _private(alice), algorithm="EdDSA"),
        "unknown user": minted(eve, sub="nobody-" + secrets.token_hex(4)),
        "garbage": "garbage",
        "three dots": "a.b.c",
    }
    for what, token in forgeries.items():
        status, document, response = await asked(node_c.url, headers={"Authorization": f"Bearer {token}"})
        assert status == 401 and document["err"], what
        assert response.headers["WWW-Authenticate"] == "Bearer", what


def _private(identity: Identity) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(identity.signing_key))


async def _record(url: str, name: str) -> bytes:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v0/users/{name}") as response:
            assert response.status == 200
            return value_from_json(await response.json()).data


async def test_tokens_of_unknown_users_are_bounded_per_host(node_c: NodeC) -> None:
    stranger = Identity.generate()
    statuses = []
    for _ in range(40):  # each names another user: each would cost a DHT lookup
        token = minted(stranger, sub="ghost-" + secrets.token_hex(6))
        statuses.append((await asked(node_c.url, params={"token": token}))[0])
    assert set(statuses) == {401, 429} and statuses[0] == 401, statuses


# ---- the node's costs ---------------------------------------------------------------------------


async def test_logins_are_bounded_per_host_before_any_work(lone: NodeProcess) -> None:
    statuses = [(await login(lone.url, "alice", "guess")).status for _ in range(25)]
    assert set(statuses) == {401, 429} and statuses[0] == 401, statuses


async def test_concurrent_password_derivations_are_bounded(lone: NodeProcess) -> None:
    _, document = account_value("bob", "bobs-password")
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{lone.url}/api/v0/users/bob", json=document) as response:
            assert response.status == 201, await response.text()
    answers = await asyncio.gather(*(login(lone.url, "bob", "bobs-password") for _ in range(10)))
    statuses = [answer.status for answer in answers]
    assert set(statuses) == {200, 429}, statuses  # 2 derivations at once: the others refused, not queued


async def test_hostile_account_records_are_refused(lone: NodeProcess) -> None:
    mallory = Identity.generate()
    record, document = account_value("carol", "carols-password")
    value = value_from_json(document)
    forged = value_to_json(signed_account(mallory, record))  # carol's key named, mallory's signature
    tampered = document | {"data": base64.b64encode(value.data[:-1] + b"\x01").decode()}
    async with aiohttp.ClientSession() as session:

        async def put(name: str, body: object) -> int:
            async with session.put(f"{lone.url}/api/v0/users/{name}", json=body) as response:
                return response.status

        async with session.put(f"{lone.url}/api/v0/users/carol", data=b"x" * 20000) as response:
            assert response.status == 413
        assert await put("carol", forged) == 400
        assert await put("carol", tampered) == 400
        assert await put("dave", document) == 400  # carol's record under another name
        assert await put("carol", {"junk": True}) == 400
        statuses = [await put("carol", document) for _ in range(6)]
        assert statuses[0] == 201 and 429 in statuses, statuses  # creations are rate-limited per host
    _, other = account_value("carol", "another-password")
    await eventually(lambda: _put_status(lone.url, "carol", other, {409}), within=30, every=1)


async def _put_status(url: str, name: str, body: dict, wanted: set[int]) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{url}/api/v0/users/{name}", json=body) as response:
            return response.status in wanted


def test_the_password_is_in_no_file_of_any_node(mesh: Mesh) -> None:
    assert asyncio.run(login(mesh.b.url)).status == 200
    for node in (mesh.a, mesh.b):
        for path in node.data_dir.rglob("*"):
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path
