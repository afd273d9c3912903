"""Free identities, many ports of one host, and replays against the mesh's storage: each attack as it
was found on a running mesh, and the defence that stops it. In-process nodes on real UDP sockets; the
honest nodes each on a loopback address of their own, the attackers on 127.0.0.1.

* quotas are charged per host: 9 ports of one host fill one host's share, and an honest put still
  reaches its replicas;
* 25 self-made identities next to a key, on one IP, are at most 2 of its replicas: every honest node
  reads the value;
* a key crowded with small unsigned values still yields its signed value to a reader that pages
  through it, and one host cannot fill more than its share of a key;
* a stranger re-sending a value does not keep it alive, nor put it back once it expired; its
  publisher still can.
"""

import asyncio
import hashlib
import os
import time
from dataclasses import replace

from dhtmesh.crypto import Identity
from dhtmesh.crypto.merkle import chunk_root
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records import rules
from dhtmesh.node.records.holding import Holding, chunk_key, signed_holding
from dhtmesh.node.storage.store import Quotas
from dhtmesh.node.values import Value, new_value_id, sign_value
from dhtmesh.testing import ATTACKER, FAST, eventually, start_node

from conftest import MeshFactory


async def hostile_nodes(count: int, mesh: list[DhtNode], **options: object) -> list[DhtNode]:
    """`count` real nodes on the attacker's host (one port each), proven to the mesh."""
    started = [await start_node(host=ATTACKER, **options) for _ in range(count)]  # type: ignore[arg-type]
    for node in started:
        await node.join([honest.address for honest in mesh])
    return started


async def stop_all(nodes: list[DhtNode]) -> None:
    for node in nodes:
        await node.stop()


# ---- quotas per host --------------------------------------------------------------------------------


async def test_nine_ports_of_one_host_fill_one_share_and_an_honest_put_still_lands(make_mesh: MeshFactory) -> None:
    quotas = Quotas(max_remote_bytes=200_000)  # each host may hold 1/8 of it
    honest = await make_mesh(4, config=replace(FAST, quotas=quotas))
    flooders = await hostile_nodes(9, honest)
    try:
        targets = honest[1:3]
        accepted = 0
        for flooder in flooders:
            for _ in range(8):
                value = Value(new_value_id(), os.urandom(4000))
                for target in targets:
                    accepted += await flooder.store_on(target.contact, os.urandom(20), value, 600.0)
        per_host = int(quotas.max_remote_bytes * quotas.peer_share) // (4000 + 64)
        assert accepted == per_host * len(targets)  # 9 ports, one host: one share on each target
        key = hashlib.sha1(b"after the flood").digest()
        value = Value(new_value_id(), os.urandom(4000))
        await honest[0].put(key, value)
        assert all(node.store.get(key) == [value] for node in honest)
    finally:
        await stop_all(flooders)


async def test_a_store_lives_no_longer_than_its_type_allows(make_mesh: MeshFactory) -> None:
    honest = await make_mesh(2)
    key, value = os.urandom(20), Value(new_value_id(), b"short-lived", 5)  # type 5 lives a minute
    assert await honest[0].store_on(honest[1].contact, key, value, 30 * 86400.0)
    assert 0 < honest[1].store.remaining_ttl(key, value) <= 60


# ---- eclipse ------------------------------------------------------------------------------------------


def identity_near(key: bytes, bits: int) -> Identity:
    """A fresh identity whose node id shares its first `bits` bits with `key` (2^bits tries on average)."""
    prefix = int.from_bytes(key, "big") >> (160 - bits)
    while True:
        identity = Identity.generate()
        if int.from_bytes(identity.node_id, "big") >> (160 - bits) == prefix:
            return identity


async def test_free_identities_on_one_host_cannot_eclipse_a_key(make_mesh: MeshFactory) -> None:
    honest = await make_mesh(5)
    key = hashlib.sha1(b"the eclipsed key").digest()
    black_hole = replace(FAST, quotas=Quotas(max_values_per_key=0))  # they take a value's place, hold nothing
    sybils = [await start_node(black_hole, host=ATTACKER, identity=identity_near(key, 10)) for _ in range(25)]
    try:
        for sybil in sybils:
            await sybil.join([honest[0].address])
        await asyncio.gather(*(node.lookup(key) for node in honest))  # honest nodes meet the sybils
        replicas = await honest[0].lookup(key)
        assert sum(contact.host == ATTACKER for contact in replicas) <= FAST.diversity.per_host
        value = honest[0].sign(key, Value(new_value_id(), b"still readable"))
        assert (await honest[0].put(key, value)).replicas == len(honest) - 1
        for node in honest:
            assert await node.get(key) == [value]
    finally:
        await stop_all(sybils)


# ---- crowded keys -----------------------------------------------------------------------------------------


async def test_a_signed_value_is_found_behind_hundreds_of_small_unsigned_ones(make_mesh: MeshFactory) -> None:
    # Reading 64 pages from each replica: FAST's 0.3 s RPC timeout is too tight for a loaded CI machine
    # (a reply that misses it ends that replica's pages), and this test is about paging, not timeouts.
    honest = await make_mesh(5, config=replace(FAST, k=3, rpc_timeout=2.0))
    key = hashlib.sha1(b"crowded").digest()
    owner = Identity.generate()
    signed = sign_value(owner, key, Value(new_value_id(), b"the one that matters", seq=1))
    writer, reader = honest[0], honest[-1]
    assert (await writer.put(key, signed)).replicas >= 1
    reader.store.expire(now=time.time() + 10**9)  # whatever it held, the reader must read over the wire
    replicas = [node for node in honest if node.store.get(key)]
    crowders = [await start_node(host=f"127.0.{250 - index}.7") for index in range(3)]  # three hosts
    try:
        for crowder in crowders:
            await crowder.join([node.address for node in honest])
            for _ in range(180):
                junk = Value(new_value_id(), b"x")
                for replica in replicas:
                    await crowder.store_on(replica.contact, key, junk, 600.0)
        assert all(len(replica.store.get(key)) > 8 * 64 for replica in replicas)  # more than 64 pages
        found = await reader.get(key)
        assert signed in found
        assert {v.identity for v in found} == {v.identity for replica in replicas for v in replica.store.get(key)}
    finally:
        await stop_all(crowders)


async def test_one_host_cannot_fill_a_key_to_crowd_out_its_owners(make_mesh: MeshFactory) -> None:
    quotas = Quotas(max_values_per_key=64)
    honest = await make_mesh(3, config=replace(FAST, quotas=quotas))
    key = hashlib.sha1(b"wanted").digest()
    (crowder,) = await hostile_nodes(1, honest)
    try:
        taken = [await crowder.store_on(honest[1].contact, key, Value(new_value_id(), b"x"), 600.0) for _ in range(64)]
        assert sum(taken) == quotas.max_values_per_key * quotas.key_share
        owner_value = honest[0].sign(key, Value(new_value_id(), b"mine"))
        await honest[0].put(key, owner_value)
        assert all(owner_value in node.store.get(key) for node in honest)
    finally:
        await stop_all([crowder])


# ---- replays --------------------------------------------------------------------------------------------


async def test_a_stranger_cannot_keep_a_value_alive_nor_put_it_back_but_its_publisher_can(
    make_mesh: MeshFactory,
) -> None:
    honest = await make_mesh(3)
    publisher, replica = honest[0], honest[1]
    (stranger,) = await hostile_nodes(1, honest)
    try:
        key = hashlib.sha1(b"short lived").digest()
        value = publisher.sign(key, Value(new_value_id(), b"cancel me", 5))  # type 5 lives 60 s
        await publisher.put(key, value, permanent=True)
        publisher.cancel_put(key, value.id)
        life = replica.store.remaining_ttl(key, value)
        assert 0 < life <= 60
        await asyncio.sleep(0.3)
        assert await stranger.store_on(replica.contact, key, value, 60.0)  # "stored": it is held
        assert replica.store.remaining_ttl(key, value) < life - 0.15  # ...but not kept alive by a stranger
        assert replica.expire_values(now=time.time() + 61) == 1
        assert await stranger.store_on(replica.contact, key, value, 60.0) is False  # nor put back
        assert replica.store.get(key) == []
        await publisher.announce(key, value)  # its publisher may put it back
        assert replica.store.get(key) == [value]
        before = replica.store.remaining_ttl(key, value)
        await asyncio.sleep(0.3)
        await publisher.announce(key, value)  # and keep it alive: its expiry moves with the clock
        assert replica.store.remaining_ttl(key, value) > before - 0.15
    finally:
        await stop_all([stranger])


async def test_a_hand_off_keeps_the_publisher_able_to_refresh(make_mesh: MeshFactory) -> None:
    honest = await make_mesh(3)
    publisher = honest[0]
    key = hashlib.sha1(b"handed off").digest()
    value = Value(new_value_id(), b"refresh me")
    await publisher.put(key, value)
    newcomer = await start_node()
    try:
        await newcomer.join([honest[1].address])
        await eventually(lambda: newcomer.store.get(key) == [value])  # handed off by a replica
        assert newcomer.store.storer_of(key, value) == publisher.node_id
        before = newcomer.store.remaining_ttl(key, value)
        await asyncio.sleep(0.3)
        await publisher.announce(key, value)  # its expiry moves with the clock
        assert newcomer.store.remaining_ttl(key, value) > before - 0.15
    finally:
        await newcomer.stop()


async def test_throwaway_holdings_cannot_fill_a_chunks_key(make_mesh: MeshFactory) -> None:
    """A chunk's root is public (its manifest lists it); holdings signed by throwaway keys are valid
    records, so one host could fill the chunk's key and no real farmer could keep the chunk. One host
    places a few (a chunk has a few holders); the real holder's holding still lands."""
    honest = await make_mesh(3)
    (forger,) = await hostile_nodes(1, honest)
    try:
        root = chunk_root(b"a chunk of a published blob")
        key, target = chunk_key(root), honest[1]
        taken = 0
        for _ in range(40):
            fake = Identity.generate()
            taken += await forger.store_on(target.contact, key, holding_of(fake, root), 600.0)
        assert taken == rules.per_host(holding_of(Identity.generate(), root))
        holder = honest[0]
        real = holding_of(holder.identity, root)
        await holder.put(key, real)
        assert real in target.store.get(key)
    finally:
        await stop_all([forger])


def holding_of(holder: Identity, root: bytes) -> Value:
    return signed_holding(holder, Holding(holder.node_id, root, 26, bytes(32), int(time.time())))
