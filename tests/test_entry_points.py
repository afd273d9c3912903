"""Every way a value enters a node, and every way it leaves towards a service, goes through the same
rule check (`records.check_value`): a forged farmer record and junk under a farmer directory key are
refused on each path in (the stock `store` RPC from an address that never proved itself, `dm_store`,
a put's store-along in `dm_find`, `dm_notify` to a listener, a local put through the proxy); and a
store written under older rules is brought up to these when its node starts, so that what leaves it
towards readers, listeners and the registry has passed them too.

The attack these stop: one stock `store` datagram from an unproven address listed a fake farmer of
height 200,000 on every node (`/api/total` went from 0 to 24 TB), and 1,024 junk values filled a
directory shard so that every registration in it failed. In-process nodes, real UDP, real SQLite,
the real HTTP proxy.
"""

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.crypto.merkle import chunk_root
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records import check_value, farmer_key, signed_farmer_value
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, FarmerRecord, farmer_value_id
from dhtmesh.node.records.holding import HOLDING_TYPE, Holding, chunk_key
from dhtmesh.node.records.registry import FarmerRegistry
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.node.storage.store import LOCAL_ORIGIN, ValueStore
from dhtmesh.node.values import InvalidValue, Value, sign_value
from dhtmesh.node.wire.endpoint import RpcRefused
from dhtmesh.proxy.app import ProxyServer
from dhtmesh.testing import FAST, eventually, udp_request

from conftest import MeshFactory


def fake_record(farmer: bytes, height: int = HEIGHT_LIMIT) -> FarmerRecord:
    now = int(time.time())
    return FarmerRecord(farmer, node_address(farmer), now - 60, now, height, 60)


def forged(mallory: Identity, victim: Identity) -> Value:
    """The victim's record at the height limit, signed by Mallory."""
    genuine = signed_farmer_value(victim, fake_record(victim.node_id), seq=7)
    return sign_value(mallory, farmer_key(victim.node_id), replace(genuine, sig=b""))


def junk_in_shard(victim: Identity) -> Value:
    """An unsigned value holding a well-formed record, under the victim's shard and its value id."""
    return Value(farmer_value_id(victim.node_id), fake_record(victim.node_id).encode())


@pytest.fixture
async def nodes(make_mesh: MeshFactory) -> list[DhtNode]:
    return await make_mesh(4)


def held(nodes: list[DhtNode], key: bytes) -> int:
    return sum(len(node.store.get(key)) for node in nodes)


async def test_one_stock_datagram_cannot_list_a_fake_farmer_anywhere(nodes: list[DhtNode]) -> None:
    registries = [FarmerRegistry(node) for node in nodes]
    try:
        assert [await registry.farmers() for registry in registries] == [[]] * len(nodes)
        victim = Identity.generate()
        plain = fake_record(victim.node_id).encode()  # what a stock `set` of the record's bytes stores
        for node in nodes:
            reply = await udp_request(node.address, "store", [os.urandom(20), farmer_key(victim.node_id), plain])
            assert reply is False
        assert held(nodes, farmer_key(victim.node_id)) == 0
        assert all(node.counters.get("stores_refused") >= 1 for node in nodes)
        for registry in registries:
            assert await registry.farmers() == [] and await registry.online() == []
    finally:
        for registry in registries:
            await registry.close()


async def test_junk_cannot_fill_a_directory_shard(nodes: list[DhtNode]) -> None:
    victim, mallory = Identity.generate(), nodes[-1]
    key = farmer_key(victim.node_id)
    for index in range(1, 1025):
        junk = Value(index, b"junk")
        assert await mallory.store_on(nodes[0].contact, key, junk, 600.0) is False  # a proven peer
        if index % 64 == 0:  # and, now and then, from an address that never proved itself
            assert await udp_request(nodes[1].address, "store", [os.urandom(20), key, b"junk"]) is False
    assert held(nodes, key) == 0
    registry = FarmerRegistry(nodes[2])
    try:
        payout = node_address(victim.node_id)
        record = fake_record(victim.node_id, height=0)
        record = replace(record, reg_time=record.last_seen, uptime=0)
        await registry.register(victim.node_id, payout, signed_farmer_value(victim, record, 1))
        await eventually(lambda: held(nodes, key) == len(nodes))
    finally:
        await registry.close()


async def test_each_peer_path_refuses_a_forged_record_and_junk_under_a_directory_key(nodes: list[DhtNode]) -> None:
    victim, mallory = Identity.generate(), Identity.generate()
    key = farmer_key(victim.node_id)
    target, attacker = nodes[0], nodes[-1]
    with target.listen(key) as listener:
        await eventually(lambda: target.subscribed_to(key, attacker.address, attacker.node_id))
        for bad in (forged(mallory, victim), junk_in_shard(victim)):
            before = target.counters.get("refused_requests")
            assert await attacker.store_on(target.contact, key, bad, 600.0) is False
            with pytest.raises(RpcRefused, match="invalid value"):
                await attacker.endpoint.call(target.address, "dm_find", {"t": key, "s": bad.to_wire(), "ttl": 600.0})
            with pytest.raises(RpcRefused, match="invalid value"):
                await attacker.endpoint.call(target.address, "dm_notify", {"k": key, "v": bad.to_wire()})
            assert target.counters.get("refused_requests") == before + 3
        assert target.store.get(key) == [] and listener.empty()


async def test_a_local_put_through_the_proxy_is_checked_as_well(nodes: list[DhtNode]) -> None:
    victim = Identity.generate()
    key = farmer_key(victim.node_id)
    with pytest.raises(InvalidValue):
        await nodes[0].put(key, junk_in_shard(victim))
    proxy = ProxyServer(nodes[0], "127.0.0.1", 0)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            body = {"id": "5", "data": "anVuaw==", "type": 0}
            async with session.post(f"{proxy.url}/key/{key.hex()}", json=body) as response:
                assert response.status == 400
                assert "reserved for records" in (await response.json())["err"]
    finally:
        await proxy.stop()
    assert held(nodes, key) == 0


async def test_a_store_written_under_older_rules_is_brought_up_to_these(tmp_path: Path) -> None:
    """What leaves the store towards readers, listeners and the registry is never checked twice, so
    nothing the rules refuse may stay in it: a store written by an older version (junk under a directory
    key, which its rules let in; a holding announced under its key before keys were reserved) is purged
    when the node starts, and the node's own records move to their new keys, signed again."""
    victim, identity = Identity.generate(), Identity.generate()
    shard, root = farmer_key(victim.node_id), chunk_root(b"a chunk")
    old_holding_key = hashlib.sha1(b"dhtmesh/chunks/" + root).digest()
    holding = Holding(identity.node_id, root, 7, bytes(32), int(time.time()))
    unsigned = Value(farmer_value_id(identity.node_id), holding.encode(), HOLDING_TYPE, seq=1)
    old_holding = sign_value(identity, old_holding_key, unsigned)
    older = ValueStore(tmp_path / "values.sqlite3")
    assert older.put(shard, junk_in_shard(victim), origin=LOCAL_ORIGIN, ttl=600).accepted
    assert older.put(old_holding_key, old_holding, origin=LOCAL_ORIGIN, ttl=600).accepted
    older.add_announce(old_holding_key, old_holding)
    older.rules_version = 1
    older.close()
    node = DhtNode(identity, FAST, tmp_path, rules=RECORD_RULES)
    try:
        assert node.store.get(shard) == [] and node.store.get(old_holding_key) == []
        ((moved_key, moved),) = node.store.announces()
        assert moved_key == chunk_key(root) and moved.data == old_holding.data
        check_value(moved_key, moved)  # signed again, by its owner, under the key it lives at now
    finally:
        await node.stop()
