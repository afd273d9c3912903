"""Correctness under faults, at sizes cut down for CI (the benchmark runs them at full size):
churn (nodes killed in waves while others join) and a flood from one peer."""

import asyncio
import hashlib
import os
import random
import socket
import time
from dataclasses import replace

import pytest

from dhtmesh.crypto import Identity
from dhtmesh.node.admission import CHALLENGES_PER_HOST
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.storage import Quotas
from dhtmesh.node.values import Value, new_value_id
from dhtmesh.node.wire import codec
from dhtmesh.testing import FAST, start_node

from conftest import MeshFactory

# The soaks' many nodes in one process keep each other busy: an attempt waits 0.3 s, not FAST's 0.2.
SOAK = replace(FAST, rpc_timeout=0.3)
CHURN = replace(SOAK, k=6)


def key_of(index: int) -> bytes:
    return hashlib.sha1(f"churn-{index}".encode()).digest()


def closest_alive(nodes: list[DhtNode], key: bytes, count: int) -> list[DhtNode]:
    target = int.from_bytes(key, "big")
    return sorted(nodes, key=lambda n: int.from_bytes(n.node_id, "big") ^ target)[:count]


def under_target(alive: list[DhtNode], values: dict[bytes, Value]) -> list[str]:
    """The values that fewer than k of their closest live nodes hold, as "key held/k"."""
    short = []
    for key, value in values.items():
        replicas = closest_alive(alive, key, CHURN.k)
        holding = sum(node.store.get_one(key, value.owner, value.id) is not None for node in replicas)
        if holding != CHURN.k:
            short.append(f"{key.hex()} {holding}/{CHURN.k}")
    return short


async def settle(nodes: list[DhtNode]) -> int:
    """What time does in a live mesh: contacts refreshed, dead ones dropped, lost replicas repaired.
    Returns how many values the repair round re-sent."""
    await asyncio.gather(*(node.lookup(node.node_id) for node in nodes))
    return sum(await asyncio.gather(*(node.replicator.repair() for node in nodes)))


@pytest.mark.bench  # the scale and churn properties of scripts/bench_scale.py, at CI size
async def test_values_survive_waves_of_killed_nodes_while_new_nodes_join(make_mesh: MeshFactory) -> None:
    chooser = random.Random(3)
    alive = await make_mesh(30, config=CHURN)
    values = {key_of(i): Value(new_value_id(), f"value {i}".encode()) for i in range(120)}
    for key, value in values.items():
        assert (await chooser.choice(alive).put(key, value)).replicas >= 1

    for _ in range(3):  # three waves of 10 %: 30 % of the original nodes killed in all
        for victim in chooser.sample(alive, 3):
            await victim.stop()  # no goodbye: to its peers this is a crash
            alive.remove(victim)
        alive += await make_mesh(2, config=CHURN)  # newcomers join through the new nodes' seed
        for newcomer in alive[-2:]:
            await newcomer.join([alive[0].address])
        await settle(alive)
    # Repair is periodic: every node repairing at the same instant (unlike a live mesh, where rounds are
    # spread out) can time out on busy peers, or find nothing to send while a table is still catching
    # up, so the next rounds find what the last one missed: rounds go on while a value is short.
    for _ in range(8):
        if not under_target(alive, values):
            break
        await settle(alive)

    assert under_target(alive, values) == []
    readers = chooser.sample(alive, 3)
    for key, value in values.items():
        for reader in readers:
            assert value in await reader.get(key)
    sample = chooser.sample(sorted(values), 5)
    for reader in alive:
        for key in sample:
            assert values[key] in await reader.get(key)


def store_datagram(sender: bytes, key: bytes, size: int) -> bytes:
    value = Value(new_value_id(), os.urandom(size))
    body = {"k": key, "v": value.to_wire(), "ttl": 600.0}
    return codec.encode(codec.REQUEST, os.urandom(20), ["dm_store", [sender, body]])


def find_datagram(sender: bytes, key: bytes) -> bytes:
    return codec.encode(codec.REQUEST, os.urandom(20), ["dm_find", [sender, {"t": key, "v": True}]])


async def test_a_flooding_peer_is_bounded_and_others_keep_being_served(make_mesh: MeshFactory) -> None:
    quotas = Quotas(max_remote_bytes=1024 * 1024)
    config = replace(FAST, quotas=quotas, peer_request_rate=500.0)
    target, *others = await make_mesh(4, config=config)
    key = hashlib.sha1(b"steady").digest()
    steady = Value(new_value_id(), b"still here")
    await others[0].put(key, steady)

    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder.setblocking(False)
    flooder_id = Identity.generate().node_id
    sent = 0
    answered_gets = 0
    started = time.monotonic()
    try:
        for batch in range(40):  # 40 × 500 = 20,000 stores and lookups, sent as fast as the socket takes them
            for index in range(500):
                if index % 2:
                    datagram = store_datagram(flooder_id, os.urandom(20), 600)
                else:
                    datagram = find_datagram(flooder_id, os.urandom(20))
                try:
                    flooder.sendto(datagram, target.address)
                    sent += 1
                except BlockingIOError:
                    await asyncio.sleep(0)
            if batch % 4 == 0:
                answered_gets += await others[1].get(key) == [steady]
            await asyncio.sleep(0)
    finally:
        flooder.close()
    await asyncio.sleep(0.5)
    elapsed = time.monotonic() - started

    assert sent >= 15000
    counters = target.counters.snapshot()
    # What got through the rate limit: at most the flooder's budget, plus the other peers' own traffic.
    served = counters["datagrams_in"] - counters.get("rate_limited", 0)
    flooder_budget = config.peer_request_rate * (elapsed + 1)
    assert counters.get("rate_limited", 0) > 0, counters
    assert served <= flooder_budget + 1500, (served, flooder_budget, counters)
    assert target.store.remote_bytes <= quotas.max_remote_bytes
    assert target.store.remote_bytes <= quotas.max_remote_bytes * quotas.peer_share + 1024
    assert counters.get("handler_errors", 0) == 0
    assert answered_gets == 10, "other peers' gets kept succeeding during the flood"
    assert [await node.get(key) for node in others] == [[steady]] * 3
    assert steady in await target.get(key)


async def test_a_flood_of_spoofed_sources_cannot_grow_memory_without_bound() -> None:
    """Many source ports: per-address state (limiter buckets, challenges, pending transfers) stays capped."""
    node = await start_node(FAST)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        for round_number in range(30):
            for sock in sockets:
                sender = hashlib.sha1(f"{round_number}-{sock.getsockname()}".encode()).digest()
                part = {"x": os.urandom(8), "i": 0, "c": 60, "d": os.urandom(1200)}
                datagram = codec.encode(codec.REQUEST, os.urandom(20), ["dm_part", [sender, part]])
                try:
                    sock.sendto(datagram, node.address)
                except BlockingIOError:
                    pass
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        endpoint = node.endpoint
        assert len(endpoint._fragments.incoming) == 0  # an unproven address may not send pieces
        # Challenges keep no state; the hellos sent for one host are rate-limited.
        assert node.counters.get("challenges_sent") <= CHALLENGES_PER_HOST * 2 + 2
        assert node.counters.get("handler_errors") == 0
    finally:
        for sock in sockets:
            sock.close()
        await node.stop()


@pytest.mark.bench  # the scale and churn properties of scripts/bench_scale.py, at CI size
async def test_every_get_succeeds_in_a_mesh_of_150_nodes(make_mesh: MeshFactory) -> None:
    """The 500-node run is in the benchmark; CI checks the same property at 150."""
    chooser = random.Random(11)
    nodes = await make_mesh(150, config=SOAK)
    stored = {}
    for index in range(60):
        key = hashlib.sha1(f"large-{index}".encode()).digest()
        value = Value(new_value_id(), f"v{index}".encode())
        assert (await chooser.choice(nodes).put(key, value)).replicas >= SOAK.k - 1
        stored[key] = value
    for key, value in stored.items():
        reader = chooser.choice([node for node in nodes if not node.store.get(key)])
        assert await reader.get(key) == [value]
