"""Attacks on the OpenDHT-compatible signed and encrypted values, each replayed on real parts.

* a notify from anyone made the node check the value it carries before asking whether the sender is a
  replica it subscribed to (one carrying an RSA-4096 signature by a key not seen before cost 0.2 ms,
  four times an unsigned one): spoofed datagrams at the node's request rate could take a whole core;
* re-posting a node's own permanent value (a farmer's holding, a manifest it re-announces: signed,
  public) made it lapse 24 h later, as a client's put does;
* a proxy client could cancel another client's permanent put, or the node's own, and a client putting
  the same content was handed the other's put;
* one client could make the node keep any number of permanent puts (50,000, put in 8 s in process,
  cost 0.65 CPU-s in each 1-second tick of the re-announcer, for a day);
* a cipher text posted with an owner and no recipient gave a 500;
* any junk of type 8 (7-day values) was held under an identity's key id, keeping its certificate out;
* 180 values of one RSA-4096 owner under a key made a replica's list of versions too large to send,
  so that nothing under that key could be repaired or handed off to it.
"""

import base64
import datetime
import math
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import aiohttp
import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from dhtmesh.api.keys import parse_key
from dhtmesh.api.value_json import value_to_json
from dhtmesh.crypto.opendht import RsaIdentity
from dhtmesh.node.storage.store import Quotas, ValueStore
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.types import CERTIFICATE_TYPE
from dhtmesh.node.values.value import InvalidValue, Value, sign_opendht_value
from dhtmesh.node.wire.endpoint import RpcRefused
from dhtmesh.testing import eventually, udp_request

from conftest import MeshFactory, Serve
from support import call, from_address


@pytest.fixture(scope="module")
def owner() -> RsaIdentity:
    return RsaIdentity.generate(2048)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# ---- dm_notify ----------------------------------------------------------------------------------


async def test_a_notify_is_checked_only_when_a_subscribed_replica_sends_it(
    make_mesh: MeshFactory, owner: RsaIdentity
) -> None:
    listening, replica = await make_mesh(2)
    key = parse_key("notified")
    genuine = sign_opendht_value(owner, Value(3, b"news", seq=1))
    forged = replace(genuine, data=b"forged")
    with listening.listen(key) as listener:
        await eventually(lambda: listening.subscribed_to(key, replica.address, replica.node_id))
        # From an address that never proved anything (it could be spoofed): dropped unread, so that a
        # flood of them costs no signature checks.
        refused_before = listening.counters.get("refused_requests")
        for value in (forged, genuine):
            notify = [os.urandom(20), {"k": key, "v": value.to_wire()}]
            assert await udp_request(listening.address, "dm_notify", notify) == {"ok": False}
        assert listening.counters.get("refused_requests") == refused_before
        # From the replica it subscribed to: checked, the forgery refused, the genuine value delivered.
        with pytest.raises(RpcRefused, match="bad signature"):
            await replica.endpoint.call(listening.address, "dm_notify", {"k": key, "v": forged.to_wire()})
        reply = await replica.endpoint.call(listening.address, "dm_notify", {"k": key, "v": genuine.to_wire()})
        assert reply.payload is True
        assert (await listener.next()).value == genuine


# ---- permanent puts ----------------------------------------------------------------------------


async def test_a_client_cancels_only_its_own_permanent_puts(serve: Serve) -> None:
    node, url = await serve()
    kept = {"data": b64(b"mine"), "permanent": True}
    async with from_address("127.0.0.2") as alice, from_address("127.0.0.3") as mallory:
        status, put = await call(alice, "POST", f"{url}/key/alice-key", kept)
        assert status == 200
        status, answer = await call(mallory, "DELETE", f"{url}/key/alice-key/{put['id']}")
        assert status == 404 and "err" in answer
        assert [v.id for _, v in node.permanent_puts()] == [int(put["id"])]
        # The same content put by another client is that client's own put, with an id of its own.
        status, copy = await call(mallory, "POST", f"{url}/key/alice-key", kept)
        assert status == 200 and copy["id"] != put["id"]
        assert (await call(mallory, "DELETE", f"{url}/key/alice-key/{copy['id']}"))[0] == 200
        status, again = await call(alice, "POST", f"{url}/key/alice-key", kept)  # still Alice's: refreshed
        assert (status, again["id"]) == (200, put["id"])
        assert (await call(alice, "DELETE", f"{url}/key/alice-key/{put['id']}"))[0] == 200
        assert node.permanent_puts() == []


async def test_no_client_cancels_the_nodes_own_permanent_puts(serve: Serve) -> None:
    node, url = await serve()
    key = parse_key("holding")
    own = node.sign(key, Value(41, b"a record the node keeps announcing", seq=1))
    await node.put(key, own, permanent=True)  # as its services do: until the node itself cancels it
    async with from_address("127.0.0.2") as stranger:
        assert (await call(stranger, "DELETE", f"{url}/key/{key.hex()}/41"))[0] == 404
        # Re-posting the node's own (signed, public) value permanently is a refresh, not a takeover.
        status, _ = await call(stranger, "POST", f"{url}/key/{key.hex()}", value_to_json(own) | {"permanent": True})
        assert status == 200
        assert (await call(stranger, "DELETE", f"{url}/key/{key.hex()}/41"))[0] == 404
    assert [v for _, v in node.permanent_puts()] == [own]
    assert node.cancel_put(key, 41)  # the node itself still can


async def test_a_permanent_put_made_again_is_never_shortened(serve: Serve) -> None:
    node, url = await serve()
    key = parse_key("holding")
    own = node.sign(key, Value(41, b"a record the node keeps announcing", seq=1))
    await node.put(key, own, permanent=True)
    async with from_address("127.0.0.2") as stranger:
        status, _ = await call(stranger, "POST", f"{url}/key/{key.hex()}", value_to_json(own) | {"permanent": True})
        assert status == 200
    # A client's put lasts 24 h from its last put; the node's own lasts until it cancels it.
    assert node.store._db.execute("SELECT until FROM announces").fetchall() == [(float("inf"),)]


def test_permanent_puts_stored_before_clients_were_kept_are_the_nodes_own(tmp_path: Path) -> None:
    path = tmp_path / "values.sqlite3"
    db = sqlite3.connect(path)  # the table as this version's predecessors wrote it
    db.execute(
        "CREATE TABLE announces (key BLOB NOT NULL, owner BLOB NOT NULL, vid INTEGER NOT NULL, "
        "value BLOB NOT NULL, PRIMARY KEY (key, owner, vid)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO announces VALUES (?, x'', 7, ?)", (b"k" * 20, msgpack.packb(Value(7, b"old").to_wire())))
    db.commit()
    db.close()
    store = ValueStore(path)
    try:
        assert store.announces() == [(b"k" * 20, Value(7, b"old"))]
        assert not store.remove_announce(b"k" * 20, 7, client="127.0.0.2")
        assert store.remove_announce(b"k" * 20, 7)
    finally:
        store.close()


async def test_a_client_keeps_a_bounded_number_of_permanent_puts(serve: Serve) -> None:
    node, url = await serve()
    per_client = node.config.quotas.permanent_puts_per_client
    key = parse_key("flood")

    async def put(session: aiohttp.ClientSession, data: bytes, permanent: bool = True) -> tuple[int, dict]:
        return await call(session, "POST", f"{url}/key/flood", {"data": b64(data), "permanent": permanent})

    async with from_address("127.0.0.2") as flooder, from_address("127.0.0.3") as neighbour:
        ids = [(await put(flooder, b"%d" % index))[1]["id"] for index in range(per_client)]
        status, answer = await put(flooder, b"one more")
        assert status == 429 and "permanent puts" in answer["err"]
        assert b"one more" not in [value.data for value in node.store.get(key)], "refused, so not stored"
        # Its own puts made again are refreshes, not more puts; a put that is not permanent is not one.
        status, again = await put(flooder, b"0")
        assert (status, again["id"]) == (200, ids[0])
        assert (await put(flooder, b"one more", permanent=False))[0] == 200
        assert (await put(neighbour, b"another client's"))[0] == 200
        assert (await call(flooder, "DELETE", f"{url}/key/flood/{ids[0]}"))[0] == 200
        assert (await put(flooder, b"in the place of one cancelled"))[0] == 200
    assert len(node.permanent_puts()) == per_client + 1


def test_all_clients_together_keep_a_bounded_number_of_permanent_puts() -> None:
    store = ValueStore(None, Quotas(permanent_puts_per_client=2, permanent_puts_of_clients=3))
    try:
        for index, client in enumerate(("10.0.0.1", "10.0.0.1", "10.0.0.2")):
            value = Value(index + 1, b"kept")
            assert store.announce_refusal(b"k" * 20, value, client) is None
            assert store.add_announce(b"k" * 20, value, math.inf, client)
        assert store.announce_refusal(b"k" * 20, Value(9, b"one more"), "10.0.0.3") is Verdict.REFUSE_PERMANENT_PUTS
        assert store.announce_refusal(b"k" * 20, Value(3, b"kept"), "10.0.0.2") is None  # made again: no more
        assert store.announce_refusal(b"k" * 20, Value(9, b"the node's own"), "") is None
    finally:
        store.close()


# ---- malformed JSON -----------------------------------------------------------------------------


async def test_a_cipher_text_with_an_owner_and_no_recipient_is_a_bad_request(serve: Serve, owner: RsaIdentity) -> None:
    node, url = await serve()
    signed = value_to_json(sign_opendht_value(owner, Value(5, b"x", seq=1)))
    body = {"id": "5", "cypher": b64(b"sealed"), "owner": signed["owner"], "sig": signed["sig"]}
    async with from_address("127.0.0.2") as client:
        for route in ("", "/sign", "/encrypt"):
            extra = {"to": "ab" * 20} if route == "/encrypt" else {}  # there `to` names whom to encrypt to
            status, answer = await call(client, "POST", f"{url}/key/sealed{route}", body | extra)
            assert status == 400 and "`to`" in answer["err"], (route, status, answer)
    assert node.counters.get("http_internal_errors") == 0 and node.store.get(parse_key("sealed")) == []


# ---- certificates -------------------------------------------------------------------------------


def certificate_value(identity: RsaIdentity, value_id: int = 1) -> Value:
    """A certificate value as an OpenDHT identity publishes it under its key id: a msgpack bin holding
    a (here self-signed) X.509 certificate of its key."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opendht")])
    now = datetime.datetime.now(datetime.UTC)
    key = identity.private_key.public_key()
    builder = x509.CertificateBuilder(name, name, key, 1, now, now + datetime.timedelta(days=1))
    der = builder.sign(identity.private_key, hashes.SHA512()).public_bytes(serialization.Encoding.DER)
    return Value(value_id, msgpack.packb(der), CERTIFICATE_TYPE)


async def test_a_certificate_is_held_only_under_its_own_key_id(make_mesh: MeshFactory, owner: RsaIdentity) -> None:
    target, attacker = await make_mesh(2)
    other = RsaIdentity.generate(2048)
    # Junk and other keys' certificates under an identity's key id (7-day values: two hosts could fill
    # the key's unsigned half, so that its own certificate found no room and nobody could encrypt to it),
    # and its certificate under another key.
    for key, value in (
        (owner.key_id, Value(2, b"junk", CERTIFICATE_TYPE)),
        (owner.key_id, certificate_value(other, 3)),
        (other.key_id, certificate_value(owner, 4)),
    ):
        assert await attacker.store_on(target.contact, key, value, 600.0) is False
        with pytest.raises(InvalidValue, match="certificate"):
            await attacker.put(key, value)
    assert target.store.get(owner.key_id) == [] and target.store.get(other.key_id) == []
    await attacker.put(owner.key_id, certificate_value(owner))
    assert await target.opendht_public_key(owner.key_id) == owner.public_der


# ---- replication --------------------------------------------------------------------------------


async def test_many_opendht_owned_values_under_a_key_do_not_stop_its_repair(make_mesh: MeshFactory) -> None:
    holder, replica, attacker = await make_mesh(3)
    key = parse_key("crowded")
    # One throwaway RSA-4096 key and 180 ids: a replica's versions of the key ([owner, id, seq] each, an
    # owner 550 bytes) no longer fit the largest reply, so that nothing could be repaired onto it.
    crowd = RsaIdentity.generate(4096)
    for value_id in range(1, 181):
        value = sign_opendht_value(crowd, Value(value_id, b"", seq=1))
        assert await attacker.store_on(replica.contact, key, value, 600.0)
    victim = holder.sign(key, Value(1000, b"a value the replica lost", seq=1))
    holder.store_locally(key, victim)
    assert await holder.replicator.send_missing(replica.contact, key) == 1
    assert replica.store.get_one(key, victim.owner, victim.id) == victim
