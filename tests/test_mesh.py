"""Behaviour of a mesh of in-process nodes over real UDP: puts, gets, listening, repair, permanence."""

import asyncio
import hashlib
import random
import time
from dataclasses import replace

from dhtmesh.crypto import Identity
from dhtmesh.node.dht import STORE_ALONG_MAX, DhtNode
from dhtmesh.node.listeners import Listener, ValueEvent
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.node.storage.store import ValueStore
from dhtmesh.node.values import Value, new_value_id, sign_value
from dhtmesh.testing import FAST, eventually, start_node, watch_datagrams

from conftest import MeshFactory
from support import subscribed

SMALL_K = replace(FAST, k=4)


def key_of(name: str) -> bytes:
    return hashlib.sha1(name.encode()).digest()


def holders(nodes: list[DhtNode], key: bytes, value: Value) -> list[DhtNode]:
    return [node for node in nodes if node.store.get_one(key, value.owner, value.id) is not None]


async def next_event(listener: Listener) -> ValueEvent:
    return await asyncio.wait_for(listener.next(), 5.0)


async def test_twenty_nodes_answer_every_get(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(20)
    chooser = random.Random(7)
    stored = {}
    for index in range(60):
        key = key_of(f"key-{index}")
        value = Value(new_value_id(), f"value {index}".encode())
        result = await chooser.choice(nodes).put(key, value)
        assert result.replicas >= 1
        stored[key] = value
    answered = 0
    for key, value in stored.items():
        values = await chooser.choice(nodes).get(key)
        answered += values == [value]
    assert answered == len(stored)


async def test_put_on_a_node_without_peers_reports_no_replicas(make_mesh: MeshFactory) -> None:
    (alone,) = await make_mesh(1)
    result = await alone.put(key_of("lonely"), Value(new_value_id(), b"only here"))
    assert (result.replicas, result.asked) == (0, 0)
    assert await alone.get(key_of("lonely")) == [result.value]


async def test_put_whose_peers_died_reports_no_replicas(make_mesh: MeshFactory) -> None:
    survivor, *others = await make_mesh(4)
    for node in others:
        await node.stop()
    result = await survivor.put(key_of("after the crash"), Value(new_value_id(), b"x"))
    assert result.replicas == 0


async def test_get_merges_by_owner_and_id_keeping_the_highest_seq(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(6)
    key = key_of("versioned")
    owner = Identity.generate()
    first = sign_value(owner, key, Value(5, b"v1", seq=1))
    await nodes[0].put(key, first)
    second = sign_value(owner, key, Value(5, b"v2", seq=2))
    # Only one replica learns of v2 directly; a get from anywhere must still return it.
    assert nodes[3].accept_store(key, second, origin=nodes[0].address[0], ttl=600).accepted
    other = sign_value(Identity.generate(), key, Value(6, b"another owner"))
    await nodes[1].put(key, other)
    values = await nodes[5].get(key)
    assert sorted((v.data, v.seq) for v in values) == [(b"another owner", 0), (b"v2", 2)]


async def test_listener_hears_new_updated_and_expired_values_from_across_the_mesh(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(8)
    key = key_of("news")
    owner = Identity.generate()
    with nodes[7].listen(key) as listener:
        await eventually(lambda: subscribed(nodes[7], key, nodes))
        first = sign_value(owner, key, Value(1, b"first", seq=1))
        await nodes[0].put(key, first)
        event = await next_event(listener)
        assert (event.value, event.expired) == (first, False)

        update = sign_value(owner, key, Value(1, b"second", seq=2))
        await nodes[1].put(key, update)
        event = await next_event(listener)
        assert (event.value.data, event.value.seq, event.expired) == (b"second", 2, False)

        later = time.time() + 3600
        for node in nodes:
            node.expire_values(later)
        event = await next_event(listener)
        assert (event.value.data, event.expired) == (b"second", True)
        await asyncio.sleep(0.3)
        assert listener._queue.empty(), "each change is reported once, not once per replica"


async def test_a_second_listener_gets_current_values_and_a_closed_one_unsubscribes(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(5)
    key = key_of("subscribed")
    value = Value(new_value_id(), b"present")
    await nodes[0].put(key, value)
    first = nodes[4].listen(key)
    assert (await next_event(first)).value == value
    second = nodes[4].listen(key)
    assert (await next_event(second)).value == value
    await eventually(lambda: subscribed(nodes[4], key, nodes))
    assert sum(node.hub.subscription_count() for node in nodes) >= 1
    first.close()
    second.close()
    await eventually(lambda: sum(node.hub.subscription_count() for node in nodes) == 0)


def by_distance(nodes: list[DhtNode], key: bytes) -> list[DhtNode]:
    return sorted(nodes, key=lambda n: int.from_bytes(n.node_id, "big") ^ int.from_bytes(key, "big"))


async def test_lost_replicas_are_repaired_by_the_closest_holder(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(10, config=SMALL_K)
    key = key_of("fragile")
    value = Value(new_value_id(), b"keep me")
    await by_distance(nodes, key)[-1].put(key, value)  # the farthest node publishes
    closest, *others = by_distance(nodes, key)[: SMALL_K.k]
    assert all(node in holders(nodes, key, value) for node in [closest, *others])
    lost = others[:2]
    for node in lost:
        await node.stop()
    alive = [n for n in nodes if n not in lost]
    # Every node notices the departures (newcomers to tables may get hand-offs), all at once: each
    # lookup waits out the silent nodes' timeouts.
    await asyncio.gather(*(node.lookup(node.node_id) for node in alive))
    await closest.replicator.repair()
    assert all(node in holders(alive, key, value) for node in by_distance(alive, key)[: SMALL_K.k])

    # A replica that lost its data (a wiped disk) is found by comparing versions, and refilled.
    wiped = by_distance(alive, key)[1]
    wiped.store.purge(lambda key, value: False)
    assert await closest.replicator.repair() == 1
    assert wiped in holders(alive, key, value)


async def test_holders_refill_the_closest_nodes_when_all_of_them_lost_a_key(make_mesh: MeshFactory) -> None:
    # After churn, the nodes closest to a key may all be newcomers that never received it; they cannot
    # repair what they lack, so the farther holders must hand it to them.
    config = replace(FAST, k=6)
    nodes = await make_mesh(12, config=config)
    key = key_of("orphaned")
    value = Value(new_value_id(), b"held only by the far replicas")
    await by_distance(nodes, key)[-1].put(key, value)
    replicas = by_distance(nodes, key)[: config.k]
    for node in replicas[:3]:
        node.store.close()
        node.store = ValueStore(None, config.quotas)  # as a newcomer: it never got the key
    assert holders(replicas, key, value) == replicas[3:]
    # One round: a far holder finds the closest node lacking the key, and repairs every replica itself.
    await asyncio.gather(*(node.replicator.repair() for node in nodes))
    assert holders(replicas, key, value) == replicas


async def test_a_small_put_stores_along_its_lookup_and_a_big_one_after_it(make_mesh: MeshFactory) -> None:
    config = replace(FAST, k=8)
    nodes = await make_mesh(30, config=config)
    publisher = nodes[0]
    for name, size in (("small", STORE_ALONG_MAX), ("big", STORE_ALONG_MAX + 1)):
        key = key_of(name)
        before = publisher.counters.get("rpc_out")
        await publisher.lookup(key)
        lookup_rpcs = publisher.counters.get("rpc_out") - before
        value = Value(new_value_id(), b"v" * size)
        before = publisher.counters.get("rpc_out")
        result = await publisher.put(key, value)
        put_rpcs = publisher.counters.get("rpc_out") - before
        closest = [n for n in by_distance(nodes, key) if n is not publisher][: config.k]
        assert all(node in holders(nodes, key, value) for node in closest)
        assert result.replicas == result.asked == config.k
        if name == "small":
            assert put_rpcs == lookup_rpcs  # the stores rode on the finds
        else:
            assert put_rpcs == lookup_rpcs + config.k


async def test_permanent_put_is_announced_again_until_cancelled(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(5)
    publisher = nodes[0]
    key = key_of("permanent")
    value = Value(new_value_id(), b"always")
    await publisher.put(key, value, permanent=True)
    later = time.time() + 3600
    for node in nodes:
        node.expire_values(later)
    assert holders(nodes, key, value) == []

    assert await publisher.replicator.republish_due() == 1
    assert len(holders(nodes, key, value)) == len(nodes)

    assert publisher.cancel_put(key, value.id)
    for node in nodes:
        node.expire_values(later + 3600)
    assert await publisher.replicator.republish_due() == 0
    assert holders(nodes, key, value) == []


async def test_values_and_announcements_survive_a_restart(tmp_path) -> None:
    identity = Identity.generate()
    node = DhtNode(identity, FAST, tmp_path, rules=RECORD_RULES)
    await node.start()
    key = key_of("durable")
    value = Value(new_value_id(), b"on disk")
    await node.put(key, value, permanent=True)
    await node.stop()

    again = DhtNode(identity, FAST, tmp_path, rules=RECORD_RULES)
    await again.start()
    try:
        assert again.store.get(key) == [value]
        assert again.store.announces() == [(key, value)]
    finally:
        await again.stop()


async def test_sixty_four_kib_value_moves_between_nodes(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(3)
    key = key_of("big")
    value = Value(new_value_id(), bytes(random.Random(1).getrandbits(8) for _ in range(64 * 1024)))
    result = await nodes[0].put(key, value)
    assert result.replicas == 2
    reader = await start_node()
    try:
        await reader.join([nodes[1].address])
        assert await reader.get(key) == [value]
    finally:
        await reader.stop()


async def test_a_get_quorum_answers_with_a_few_rpcs_instead_of_k(make_mesh: MeshFactory) -> None:
    quick = replace(FAST, get_quorum=3)
    nodes = await make_mesh(30, config=quick)
    key = key_of("popular")
    value = Value(new_value_id(), b"asked often")
    await nodes[0].put(key, value)
    reader = next(node for node in nodes if not node.store.get(key))
    before = reader.counters.get("rpc_out")
    assert await reader.get(key) == [value]
    quorum_rpcs = reader.counters.get("rpc_out") - before

    exhaustive = DhtNode(Identity.generate(), FAST, rules=RECORD_RULES)  # the default: every one of the k closest
    await exhaustive.start()
    try:
        await exhaustive.join([nodes[0].address])
        before = exhaustive.counters.get("rpc_out")
        assert await exhaustive.get(key) == [value]
        exhaustive_rpcs = exhaustive.counters.get("rpc_out") - before
    finally:
        await exhaustive.stop()
    assert quorum_rpcs <= 6 < FAST.k <= exhaustive_rpcs


async def test_a_get_for_one_value_id_brings_only_that_value(make_mesh: MeshFactory) -> None:
    """Replicas asked for one id send just that value (a farmer lookup must not pull its whole shard)."""
    nodes = await make_mesh(4)
    key = bytes(range(20))
    owners = [Identity.generate() for _ in range(12)]
    for value_id, owner in enumerate(owners, start=1):
        await nodes[0].put(key, sign_value(owner, key, Value(value_id, b"x" * 200, 0, seq=1)))
    reader = nodes[3]
    with watch_datagrams([reader]) as sent:
        one = await reader.get(key, value_id=7)
    assert [(v.id, v.owner) for v in one] == [(7, owners[6].public_key)]
    with watch_datagrams([reader]) as sent_all:
        every = await reader.get(key)
    assert len(every) == 12 and len(sent) < len(sent_all)
