"""Cheap denials of service found against a running mesh, each with its defence, on real UDP sockets:

* a flood of short subscriptions from a few identities no longer locks the subscription table: caps
  per subscribing node and per host, and expired entries purged as their time comes;
* silent addresses no longer starve identity challenges: one challenge at a time per host, a few
  per subnet, each with a short deadline;
* datagrams are rate-limited per host before they are decoded, and none larger than an Ethernet
  frame is decoded at all;
* a node listens to a bounded number of keys, and its listeners of one key share one subscription.
"""

import asyncio
import os
import socket
from dataclasses import replace

import msgpack
import pytest

from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode, ListenRefused
from dhtmesh.node.listeners import MAX_SUBSCRIBERS_PER_KEY_PER_HOST, MAX_SUBSCRIPTIONS_PER_NODE
from dhtmesh.node.records import DIRECTORY_KEYS
from dhtmesh.node.records.registry import FarmerRegistry
from dhtmesh.node.wire import codec
from dhtmesh.node.wire.endpoint import RpcFailure
from dhtmesh.testing import ATTACKER, FAST, eventually, start_node, udp_request

from conftest import MeshFactory


async def call_all(calls: list, window: int = 64) -> list[bool]:
    """Run the calls `window` at a time; True for each that was accepted."""
    gate = asyncio.Semaphore(window)

    async def one(call: object) -> bool:
        async with gate:
            try:
                await call  # type: ignore[misc]
            except RpcFailure:
                return False
            return True

    return await asyncio.gather(*(one(call) for call in calls))


async def test_short_subscriptions_from_a_few_identities_cannot_lock_the_table(make_mesh: MeshFactory) -> None:
    (node,) = await make_mesh(1)
    flooders = [await start_node(host=ATTACKER) for _ in range(4)]
    try:
        for flooder in flooders:
            await flooder.join([node.address])
        tries = MAX_SUBSCRIPTIONS_PER_NODE + 50
        for flooder in flooders:
            body = {"ttl": 4.0}  # the four floods take ~1 s: this outlasts them on a loaded machine too
            calls = [flooder.endpoint.call(node.address, "dm_sub", body | {"k": os.urandom(20)}) for _ in range(tries)]
            accepted = sum(await call_all(calls))
            assert accepted == MAX_SUBSCRIPTIONS_PER_NODE  # a node subscribes to so many keys at most
        assert node.hub.subscription_count() == 4 * MAX_SUBSCRIPTIONS_PER_NODE
        # Expired subscriptions go as their time comes, with nobody pushing to them.
        await eventually(lambda: node.hub.subscription_count() == 0, within=15)
        honest = await start_node()
        try:
            await honest.join([node.address])
            await honest.endpoint.call(node.address, "dm_sub", {"k": os.urandom(20), "ttl": 10.0})
            assert node.hub.subscription_count() == 1
        finally:
            await honest.stop()
    finally:
        for flooder in flooders:
            await flooder.stop()


async def test_silent_addresses_do_not_starve_newcomers_of_identity_challenges() -> None:
    """100 addresses over 10 subnets, a hundred requests a second, each causing a challenge that is never
    answered, against a node with OpenDHT's 1 s timeout: three newcomers from other hosts are admitted
    meanwhile (challenges keep no state that silence could hold)."""
    node = await start_node(NodeConfig())
    newcomers: list[DhtNode] = []
    silent = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
    try:
        for index, sock in enumerate(silent):
            sock.bind((f"127.0.{200 + index // 10}.{index % 10 + 2}", 0))
            sock.setblocking(False)

        async def flood() -> None:
            while True:
                for sock in silent:
                    body = [os.urandom(20), {"t": os.urandom(20)}]
                    sock.sendto(codec.encode(codec.REQUEST, os.urandom(20), ["dm_find", body]), node.address)
                    await asyncio.sleep(0.01)

        flooding = asyncio.get_running_loop().create_task(flood())
        try:
            await asyncio.sleep(1.0)  # the flood is on before the newcomers come
            newcomers = [await start_node(NodeConfig()) for _ in range(3)]
            await asyncio.gather(*(newcomer.join([node.address]) for newcomer in newcomers))
            await eventually(lambda: all(n.node_id in node.table for n in newcomers), within=8)
            assert node.counters.get("challenges_sent") > 50  # the flood was challenged, statelessly
        finally:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)
    finally:
        for sock in silent:
            sock.close()
        for started in [node, *newcomers]:
            await started.stop()


async def test_requests_are_rate_limited_per_host_before_they_are_decoded(make_mesh: MeshFactory) -> None:
    rate = 200.0
    (node,) = await make_mesh(1, config=replace(FAST, peer_request_rate=rate))
    before_limited = node.counters.get("rate_limited")
    before_malformed = node.counters.get("malformed_datagrams")
    garbage = bytes((codec.REQUEST,)) + os.urandom(20) + b"\xc1" * 400  # never valid msgpack
    loop = asyncio.get_running_loop()
    started = loop.time()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ATTACKER, 0))
        for index in range(2000):
            sock.sendto(garbage, node.address)
            if index % 100 == 0:
                await asyncio.sleep(0)
        await eventually(lambda: node.counters.get("rate_limited") + node.counters.get("malformed_datagrams")
                         - before_limited - before_malformed >= 1900, within=5)
    elapsed = loop.time() - started
    limited = node.counters.get("rate_limited") - before_limited
    decoded = node.counters.get("malformed_datagrams") - before_malformed
    # One bucket for the host: its burst, and what it refilled while the flood lasted, were decoded (and
    # found garbage); the rest was stopped before any decoding.
    assert decoded <= rate * (1 + elapsed) + 1
    assert limited >= 2000 - decoded - 100  # a few may be lost by the socket's buffer, none taken in


@pytest.mark.parametrize(
    "payload",
    [b"\x90" * 64000, msgpack.packb(["ping", [os.urandom(20), b"x" * 1600]])],
    ids=["64 KB of empty lists", "an oversized ping"],
)
async def test_datagrams_larger_than_a_frame_are_refused_unread(make_mesh: MeshFactory, payload: bytes) -> None:
    (node,) = await make_mesh(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ATTACKER, 0))
        for _ in range(20):
            sock.sendto(bytes((codec.REQUEST,)) + os.urandom(20) + payload, node.address)
        await eventually(lambda: node.counters.get("oversized_datagrams") == 20, within=3)
    assert node.counters.get("malformed_datagrams") == 0  # not one was decoded (nor taken for garbage)
    assert node.counters.get("rpc_in.ping") == 0


async def test_a_node_listens_to_a_bounded_number_of_keys_and_shares_subscriptions(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(3, config=replace(FAST, max_listened_keys=4))
    listener_node, replicas = nodes[0], nodes[1:]
    key = os.urandom(20)
    same_key = [listener_node.listen(key) for _ in range(10)]
    await eventually(lambda: all(replica.hub.subscription_count() == 1 for replica in replicas))
    others = [listener_node.listen(os.urandom(20)) for _ in range(3)]
    with pytest.raises(ListenRefused):
        listener_node.listen(os.urandom(20))
    assert listener_node.counters.get("listens_refused") == 1
    extra = listener_node.listen(key)  # a key already listened to costs nothing more
    others[0].close()
    freed = listener_node.listen(os.urandom(20))
    registry = FarmerRegistry(listener_node)  # the node's own service is not held to the clients' cap
    try:
        await registry.open()
        assert all(listener_node.hub.is_listening(shard) for shard in DIRECTORY_KEYS)
    finally:
        await registry.close()
    for listener in [*same_key, *others, extra, freed]:
        listener.close()


async def test_one_host_takes_a_few_subscriber_slots_of_a_key_and_cannot_drop_others(make_mesh: MeshFactory) -> None:
    (replica,) = await make_mesh(1)
    key = os.urandom(20)
    crowd = [await start_node(host=ATTACKER) for _ in range(MAX_SUBSCRIBERS_PER_KEY_PER_HOST + 4)]
    honest = await start_node()
    try:
        for node in [*crowd, honest]:
            await node.join([replica.address])
        body = {"k": key, "ttl": 30.0}
        accepted = await call_all([node.endpoint.call(replica.address, "dm_sub", body) for node in crowd])
        assert sum(accepted) == MAX_SUBSCRIBERS_PER_KEY_PER_HOST  # a host's few nodes, not every slot of a key
        await honest.endpoint.call(replica.address, "dm_sub", {"k": key, "ttl": 30.0})
        # An address that never proved itself (a spoofed one, say) cannot drop anyone's subscription.
        reply = await udp_request(replica.address, "dm_unsub", [honest.node_id, {"k": key}], source=honest.address[0])
        assert reply == {"err": "unproven"}
        assert (honest.address, honest.node_id) in replica.hub.subscribers_of(key)
    finally:
        for node in [*crowd, honest]:
            await node.stop()
