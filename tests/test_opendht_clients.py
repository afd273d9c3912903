"""OpenDHT's own clients on a dhtmesh mesh, signed and encrypted values included.

Debian's `dhtnode --proxyclient` (OpenDHT 2.4.12) is driven command by command against two proxies of
one mesh of `dhtmesh run` processes: `s` (putSigned with the client's RSA identity), `e` (putEncrypted
to another client's key id), `g`, `l`, `p` and `pp`, and the proxy's `/sign` and `/encrypt` with the
node's OpenDHT identity. The edit policy on OpenDHT owners is checked over HTTP and on the wire, and a
client's permanent put ends as on OpenDHT's proxy unless it is put again.
"""

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from dhtmesh.api.keys import parse_key
from dhtmesh.api.value_json import value_from_json, value_to_json
from dhtmesh.crypto import Identity, open_sealed
from dhtmesh.crypto.opendht import RsaIdentity
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records import farmer_key
from dhtmesh.node.records.farmer import farmer_value_id
from dhtmesh.node.records.rules import RECORD_RULES, check_value
from dhtmesh.node.values import InvalidValue, Value
from dhtmesh.node.values.value import (
    HIDDEN_RECIPIENT,
    certificate_public_key,
    certificate_value,
    decrypt_opendht_value,
    encrypt_opendht_value,
    sign_opendht_value,
)
from dhtmesh.node.wire.endpoint import RpcRefused
from dhtmesh.testing import FAST, NodeProcess, ProcessGroup, eventually, run_cli, start_node

from conftest import MeshFactory
from support import OpenDhtClient


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Two nodes; the first signs and encrypts for callers with an OpenDHT identity."""
    group = ProcessGroup(tmp_path_factory.mktemp("opendht"))
    try:
        first = group.launch("a", "--opendht-identity")
        yield [first, group.launch("b", "-b", first.udp)]
    finally:
        group.stop()


@pytest.fixture
def clients() -> Iterator[list[OpenDhtClient]]:
    """`clients.append(OpenDhtClient(...))`: stopped by PID at the end of the test."""
    started: list[OpenDhtClient] = []
    yield started
    for client in started:
        client.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def client(clients: list[OpenDhtClient], node: NodeProcess, identity: bool = False) -> OpenDhtClient:
    started = OpenDhtClient(node.url, identity)
    clients.append(started)
    return started


async def values_at(session: aiohttp.ClientSession, node: NodeProcess, key: str) -> list[Value]:
    async with session.get(f"{node.url}/key/{parse_key(key).hex()}") as response:
        return [value_from_json(document) for document in _lines(await response.text())]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line]


async def certificate_published(session: aiohttp.ClientSession, node: NodeProcess, key_id: str) -> None:
    """Wait until `node` finds the certificate an OpenDHT identity puts under its key id."""

    async def found() -> bool:
        async with session.get(f"{node.url}/key/{key_id}") as response:
            return bool(_lines(await response.text()))

    await eventually(found)


async def post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# ---- OpenDHT clients' values --------------------------------------------------------------------


@pytest.mark.process
async def test_plain_puts_gets_and_listens_of_a_client(
    mesh: list[NodeProcess], clients: list[OpenDhtClient], session: aiohttp.ClientSession
) -> None:
    opendht = client(clients, mesh[0])
    opendht.wait_connected()  # the client reads the node's info as OpenDHT's "connected"
    opendht.send("p plain-key hello")
    opendht.expect("Put: success")
    opendht.send("g plain-key")
    opendht.expect(r"Get: found 1 value")
    opendht.expect(r'data\(text/plain\):"hello"')
    opendht.send("l plain-key")
    opendht.expect(r"Listen: found 1 values")
    opendht.send("p plain-key again")
    opendht.expect(r"Listen: found 1 values \(total 2\)")
    opendht.expect(r'data\(text/plain\):"again"')
    stored = await values_at(session, mesh[1], "plain-key")
    assert sorted(v.data for v in stored) == [b"again", b"hello"]
    assert all(v.utype == "text/plain" and not v.signed for v in stored)


@pytest.mark.process
async def test_a_signed_put_is_kept_checked_and_read_through_another_proxy(
    mesh: list[NodeProcess], clients: list[OpenDhtClient], session: aiohttp.ClientSession
) -> None:
    writer, reader = client(clients, mesh[0], identity=True), client(clients, mesh[1])
    writer.send("s signed-key hello")
    writer.expect("Put signed: success")
    reader.send("g signed-key")
    reader.expect(r"Get: found 1 value")
    reader.expect(r'signed \(v0\) data\(text/plain\):"hello"')  # its signature held in the client
    [value] = await values_at(session, mesh[1], "signed-key")
    assert value.opendht_signed and value.data == b"hello"
    check_value(parse_key("signed-key"), value)  # an RSA signature over OpenDHT's "to sign" form
    # The same bytes again refresh; altered data or a seq raised without signing again are refused.
    url = f"{mesh[1].url}/key/{parse_key('signed-key').hex()}"
    assert (await post(session, url, value_to_json(value)))[0] == 200
    for forged in (replace(value, data=b"evil"), replace(value, seq=value.seq + 1)):
        status, body = await post(session, url, value_to_json(forged))
        assert (status, body["err"]) == (400, "bad signature")


@pytest.mark.process
async def test_an_encrypted_put_reaches_its_recipient_through_another_proxy(
    mesh: list[NodeProcess], clients: list[OpenDhtClient], session: aiohttp.ClientSession
) -> None:
    recipient = client(clients, mesh[1], identity=True)  # publishes its certificate under its key id
    sender = client(clients, mesh[0], identity=True)
    await certificate_published(session, mesh[0], recipient.key_id)
    sender.send(f"e secret-key {recipient.key_id} for-your-eyes")
    sender.expect("Put encrypted: success")
    recipient.send("g secret-key")
    recipient.expect(r'signed \(v0\) decrypted data\(text/plain\):"for-your-eyes"')
    # Stored and served as it came: the id and the cipher text, nothing else.
    async with session.get(f"{mesh[0].url}/key/{parse_key('secret-key').hex()}") as response:
        [document] = _lines(await response.text())
    assert sorted(document) == ["cypher", "id"]
    assert value_from_json(document).to == HIDDEN_RECIPIENT


@pytest.mark.process
async def test_listen_and_permanent_puts_of_a_client(
    mesh: list[NodeProcess], clients: list[OpenDhtClient], session: aiohttp.ClientSession
) -> None:
    listener, writer = client(clients, mesh[1]), client(clients, mesh[0], identity=True)
    listener.send("l listened-key")
    writer.send("s listened-key signed-news")
    listener.expect(r"Listen: found 1 values")
    listener.expect(r'signed \(v0\) data\(text/plain\):"signed-news"')
    # A client with an identity puts its certificate as a permanent put of its own when it starts
    # (OpenDHT's SecureDht): counted before the count is read, or it lands between the two reads.
    await certificate_published(session, mesh[0], writer.key_id)
    before = await _stats(session, mesh[0])
    for _ in range(2):  # OpenDHT's proxy: the same permanent content put again is one put, refreshed
        writer.send("pp permanent-key kept")
        writer.expect("Put: success")
    after = await _stats(session, mesh[0])
    assert after["totalPermanentPuts"] == before["totalPermanentPuts"] + 1
    assert after["putCount"] == before["putCount"] + 1


async def _stats(session: aiohttp.ClientSession, node: NodeProcess) -> dict:
    async with session.get(f"{node.url}/node/stats") as response:
        return await response.json()


# ---- the node's own OpenDHT identity ------------------------------------------------------------


@pytest.mark.process
async def test_the_node_signs_and_encrypts_so_that_opendht_clients_can_check_and_read(
    mesh: list[NodeProcess], clients: list[OpenDhtClient], session: aiohttp.ClientSession
) -> None:
    recipient = client(clients, mesh[1], identity=True)
    await certificate_published(session, mesh[0], recipient.key_id)
    signed_url = f"{mesh[0].url}/key/{parse_key('node-signed').hex()}/sign"
    status, body = await post(session, signed_url, {"data": b64(b"from the node"), "utype": "text/plain"})
    assert status == 200 and body["owner"].startswith("-----BEGIN PUBLIC KEY-----")
    encrypt_url = f"{mesh[0].url}/key/{parse_key('node-sealed').hex()}/encrypt"
    message = {"data": b64(b"to you"), "utype": "text/plain", "to": recipient.key_id}
    status, body = await post(session, encrypt_url, message)
    assert status == 200 and sorted(body) == ["cypher", "id", "replicas"]
    recipient.send("g node-signed")
    recipient.expect(r'signed \(v0\) data\(text/plain\):"from the node"')
    recipient.send("g node-sealed")
    recipient.expect(r'signed \(v0\) decrypted data\(text/plain\):"to you"')
    # A 40-character `to` that is not hex, and one that names nobody: 400s that say so.
    status, body = await post(session, encrypt_url, message | {"to": "zz" * 20})
    assert status == 400 and "40 hex" in body["err"]
    # No certificate under a key id: nothing to encrypt to.
    status, body = await post(session, encrypt_url, message | {"to": "ab" * 20})
    assert status == 400 and "no OpenDHT certificate" in body["err"]
    # A dhtmesh recipient (an Ed25519 key) gets a sealed box, signed with the node's Ed25519 key.
    dhtmesh_user = Identity.generate()
    status, body = await post(session, encrypt_url, message | {"to": dhtmesh_user.public_key.hex()})
    sealed = value_from_json(body)
    assert status == 200 and len(sealed.owner) == 32 and sealed.to == dhtmesh_user.node_id
    assert open_sealed(dhtmesh_user, sealed.data) == b"to you"


@pytest.mark.process
async def test_clients_encrypt_to_the_node_and_its_operator_reads_with_dhtmesh_get(
    mesh: list[NodeProcess], clients: list[OpenDhtClient], session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{mesh[0].url}/") as response:
        node_key_id = (await response.json())["id"]  # as OpenDHT's node info names it
    await certificate_published(session, mesh[1], node_key_id)
    sender = client(clients, mesh[1], identity=True)
    sender.send(f"e to-the-node {node_key_id} hello-node")
    sender.expect("Put encrypted: success")
    own_key = str(mesh[0].data_dir / "opendht-identity.pem")
    read = run_cli("get", "--url", mesh[1].url, "to-the-node", "--opendht-identity", own_key)
    assert read.returncode == 0, read.stderr
    assert f"owner={sender.key_id}" in read.stdout and 'decrypted=true data="hello-node"' in read.stdout
    unread = run_cli("get", "--url", mesh[1].url, "to-the-node")  # without the key: the cipher text only
    assert "sealed=true" in unread.stdout and "hello-node" not in unread.stdout


@pytest.mark.process  # runs the CLI
def test_an_opendht_identity_file_that_is_no_rsa_key_is_one_line_of_error(
    mesh: list[NodeProcess], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    for command in (
        ["get", "--url", mesh[0].url, "some-key", "--opendht-identity", str(junk)],
        ["run", "-p", "0", "--proxyserver", "0", "--persist", str(tmp_path / "node"), "--opendht-identity", str(junk)],
    ):
        result = run_cli(*command)
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1 and "cannot read the OpenDHT identity" in result.stderr, result.stderr


# ---- the edit policy on OpenDHT owners ----------------------------------------------------------


@pytest.fixture(scope="module")
def owners() -> tuple[RsaIdentity, RsaIdentity]:
    return RsaIdentity.generate(2048), RsaIdentity.generate(2048)


@pytest.mark.process
async def test_an_opendht_owner_edits_only_its_own_values_upwards(
    mesh: list[NodeProcess], owners: tuple[RsaIdentity, RsaIdentity], session: aiohttp.ClientSession
) -> None:
    alice, mallory = owners
    key = parse_key("edited-key")
    url = f"{mesh[0].url}/key/{key.hex()}"
    first = sign_opendht_value(alice, Value(77, b"v1", seq=1))
    assert (await post(session, url, value_to_json(first)))[0] == 200
    status, body = await post(session, url, value_to_json(sign_opendht_value(alice, Value(77, b"v0", seq=0))))
    assert status == 409 and "stale" in body["err"]
    status, body = await post(session, url, value_to_json(sign_opendht_value(mallory, Value(77, b"mine", seq=9))))
    assert status == 409 and "another owner" in body["err"]
    assert (await post(session, url, value_to_json(sign_opendht_value(alice, Value(77, b"v2", seq=2)))))[0] == 200

    async def only_the_latest_is_read() -> bool:
        return [v.data for v in await values_at(session, mesh[1], "edited-key")] == [b"v2"]

    await eventually(only_the_latest_is_read)


def test_bad_opendht_owners_and_records_are_refused(owners: tuple[RsaIdentity, RsaIdentity]) -> None:
    alice, _ = owners
    good = sign_opendht_value(alice, Value(5, b"x", seq=1))
    check_value(b"k" * 20, good)
    refused = [
        (replace(good, seq=1 << 16), "16-bit"),  # beyond OpenDHT's seq
        (replace(good, sig=good.sig[:-1]), "bad signature"),
        (replace(good, owner=good.owner[:-1]), "owner"),
        (replace(good, owner=good.owner + bytes(2000)), "owner: too long"),
        (replace(good, to=b"r" * 20), "recipient"),
    ]
    for value, reason in refused:
        with pytest.raises(InvalidValue, match=reason):
            check_value(b"k" * 20, value)
    victim = Identity.generate()  # a record under a farmer's key, signed by an OpenDHT identity
    record = sign_opendht_value(alice, Value(farmer_value_id(victim.node_id), b"x", 0x4661, seq=1))
    with pytest.raises(InvalidValue, match="records are signed by dhtmesh"):
        check_value(farmer_key(victim.node_id), record)


def test_an_opendht_cipher_text_opens_only_for_its_recipient(owners: tuple[RsaIdentity, RsaIdentity]) -> None:
    alice, bob = owners
    for size in (10, 5000):  # one RSA block; an RSA block and AES-GCM
        sealed = encrypt_opendht_value(alice, bob.public_der, Value(9, b"m" * size, utype="text/plain"))
        opened = decrypt_opendht_value(bob, sealed)
        assert (opened.data, opened.owner, opened.utype) == (b"m" * size, alice.public_der, "text/plain")
        with pytest.raises(InvalidValue):
            decrypt_opendht_value(alice, sealed)
        with pytest.raises(InvalidValue):
            decrypt_opendht_value(bob, replace(sealed, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])))


def test_a_node_publishes_the_same_certificate_every_time(owners: tuple[RsaIdentity, RsaIdentity]) -> None:
    """Published again at each start, it must be a refresh of the value id 1 it holds, not an edit."""
    identity = owners[0]
    assert certificate_value(identity) == certificate_value(identity)
    assert certificate_public_key(certificate_value(identity)) == identity.public_der
    with pytest.raises(InvalidValue, match="not an OpenDHT certificate"):
        certificate_public_key(Value(1, b"\xc4\x03abc", 8))


async def test_every_hop_checks_an_opendht_signature(
    make_mesh: MeshFactory, owners: tuple[RsaIdentity, RsaIdentity]
) -> None:
    target, attacker = await make_mesh(2)
    key = parse_key("hop-key")
    good = sign_opendht_value(owners[0], Value(11, b"genuine", seq=3))
    forged = replace(good, data=b"forged")
    assert await attacker.store_on(target.contact, key, forged, 600.0) is False
    with pytest.raises(RpcRefused, match="invalid value"):
        await attacker.endpoint.call(target.address, "dm_find", {"t": key, "s": forged.to_wire(), "ttl": 600.0})
    assert target.store.get(key) == []
    assert await attacker.store_on(target.contact, key, good, 600.0) is True
    assert target.store.get(key) == [good]


# ---- permanent puts end unless refreshed --------------------------------------------------------


async def test_a_permanent_put_lapses_unless_put_again_and_outlives_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    node = await start_node(FAST, data_dir)
    key = parse_key("kept")
    try:
        await node.put(key, Value(1, b"brief"), permanent=True, until=time.time() + 0.5)
        await node.put(key, Value(2, b"long"), permanent=True, until=time.time() + 3600)
        await node.put(key, Value(3, b"refreshed"), permanent=True, until=time.time() + 0.5)
        await node.put(key, Value(3, b"refreshed"), permanent=True, until=time.time() + 3600)
        await asyncio.sleep(0.6)
        await node.replicator.republish_due()
        assert sorted(v.id for _, v in node.permanent_puts()) == [2, 3]
        assert node.counters.get("permanent_puts_lapsed") == 1
    finally:
        await node.stop()
    again = DhtNode(Identity.generate(), FAST, data_dir, rules=RECORD_RULES)  # the same SQLite file
    try:
        assert sorted(v.id for _, v in again.permanent_puts(key)) == [2, 3]
    finally:
        again.store.close()
