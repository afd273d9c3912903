"""Attacks on the OpenDHT-compatible signed and encrypted values, each replayed on real parts.

* a notify from anyone made the node check the value it carries (an RSA-4096 signature from a key it
  had not seen cost ~0.15 ms, three times an unsigned notify) before asking whether the sender is a
  replica it subscribed to: spoofed datagrams at the node's request rate could take a whole core;
* re-posting a node's own permanent value (a farmer's holding, a manifest it re-announces: signed,
  public) made it lapse 24 h later, as a client's put does;
"""

import os
from dataclasses import replace

import pytest

from dhtmesh.crypto.opendht import RsaIdentity
from dhtmesh.node.values.value import Value, sign_opendht_value
from dhtmesh.node.wire.endpoint import RpcRefused
from dhtmesh.proxy.keys import parse_key
from dhtmesh.proxy.value_json import value_to_json

from conftest import MeshFactory, Serve
from support import call, eventually, from_address, udp_request


@pytest.fixture(scope="module")
def owner() -> RsaIdentity:
    return RsaIdentity.generate(2048)


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
