"""The farmer registry on in-process nodes (real UDP, real SQLite): its live view, the 5-minute online
window on a controlled clock, expiry, the checks a change passes, and a node that farms itself."""

import asyncio
import time
from dataclasses import replace

import pytest

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records import farmer_key, signed_farmer_value
from dhtmesh.node.records.agent import FarmerAgent
from dhtmesh.node.records.farmer import FARMER_RECORD_EXPIRY, FarmerRecord, next_signed
from dhtmesh.node.records.farmer_events import ONLINE_TIME, pinged, registered, with_height
from dhtmesh.node.records.registry import AlreadyRegistered, BadFarmerRecord, FarmerRegistry, UnknownFarmer
from dhtmesh.testing import FAST, eventually, start_node

from conftest import MeshFactory


async def register(registry: FarmerRegistry, farmer: Identity) -> FarmerRecord:
    payout = node_address(farmer.node_id)
    record = registered(farmer.node_id, payout, int(time.time()))
    return await registry.register(farmer.node_id, payout, next_signed(farmer, None, record))


async def report_height(registry: FarmerRegistry, farmer: Identity, height: int) -> FarmerRecord:
    current = await registry.find(farmer.node_id)
    assert current is not None

    def event(record: FarmerRecord, now: int, ip: str) -> FarmerRecord:
        return with_height(record, height, now, ip)

    signed = next_signed(farmer, current, event(current[1], int(time.time()), ""))
    return await registry.change(farmer.node_id, event, signed)


async def listed(registry: FarmerRegistry, farmer: Identity, height: int | None = None) -> bool:
    found = [r for r in await registry.farmers() if r.node_id == farmer.node_id]
    return bool(found) and (height is None or found[0].height == height)


@pytest.fixture
async def registries(make_mesh: MeshFactory) -> list[FarmerRegistry]:
    nodes: list[DhtNode] = await make_mesh(4)
    opened = [FarmerRegistry(node) for node in nodes]
    yield opened
    for registry in opened:
        await registry.close()


async def test_the_view_lists_farmers_registered_before_and_after_it_opened_through_other_nodes(
    registries: list[FarmerRegistry],
) -> None:
    early, late = Identity.generate(), Identity.generate()
    await register(registries[0], early)
    viewer = registries[3]
    assert await listed(viewer, early)  # opening gathers every shard
    await register(registries[1], late)
    await eventually(lambda: listed(viewer, late))
    await report_height(registries[2], late, 42)
    await eventually(lambda: listed(viewer, late, height=42))


async def test_a_farmer_drops_out_of_online_after_five_minutes_and_stays_registered(
    make_mesh: MeshFactory,
) -> None:
    nodes = await make_mesh(3)
    clock = [time.time()]
    viewer = FarmerRegistry(nodes[2], clock=lambda: clock[0])
    farmer = Identity.generate()
    await register(FarmerRegistry(nodes[0]), farmer)
    try:
        assert [r.node_id for r in await viewer.online()] == [farmer.node_id]
        clock[0] += ONLINE_TIME + 1
        assert await viewer.online() == []
        assert [r.node_id for r in await viewer.farmers()] == [farmer.node_id]
        assert await viewer.find(farmer.node_id) is not None
    finally:
        await viewer.close()


async def test_the_view_forgets_a_record_when_it_expires_everywhere(registries: list[FarmerRegistry]) -> None:
    farmer = Identity.generate()
    later = time.time() + FARMER_RECORD_EXPIRY + 1
    viewer = FarmerRegistry(registries[1].node, clock=lambda: later)
    await register(registries[0], farmer)
    await eventually(lambda: listed(viewer, farmer))
    # 30 days without a signed change: every replica drops the record (one replica alone would not
    # make it disappear: the view would find it again on the others).
    for registry in registries:
        assert registry.node.expire_values(now=later) == 1

    async def forgotten() -> bool:
        return not await listed(viewer, farmer)

    await eventually(forgotten)
    await viewer.close()


async def test_an_early_expired_notice_does_not_hide_a_farmer(registries: list[FarmerRegistry]) -> None:
    """A replica (or anyone replaying the signed record) saying "expired" a month early is ignored."""
    farmer = Identity.generate()
    viewer = registries[2]
    await register(registries[0], farmer)
    await eventually(lambda: listed(viewer, farmer))
    value, _ = await viewer.find(farmer.node_id) or (None, None)
    assert value is not None
    viewer.node.hub.emit(farmer_key(farmer.node_id), value, expired=True)
    await asyncio.sleep(0.2)
    assert await listed(viewer, farmer)


async def test_a_change_is_taken_only_with_the_record_the_request_makes(registries: list[FarmerRegistry]) -> None:
    registry = registries[0]
    farmer, stranger = Identity.generate(), Identity.generate()
    with pytest.raises(UnknownFarmer):
        await registry.change(farmer.node_id, pinged, None)
    with pytest.raises(BadFarmerRecord, match="signed record"):
        await registry.register(farmer.node_id, node_address(farmer.node_id), None)
    record = await register(registry, farmer)
    with pytest.raises(AlreadyRegistered):
        await register(registries[2], farmer)
    value, _ = await registry.find(farmer.node_id) or (None, None)
    assert value is not None
    now = int(time.time())

    def height_7(current: FarmerRecord, at: int, ip: str) -> FarmerRecord:
        return with_height(current, 7, at, ip)

    refused = {
        "no record for a change": None,
        "another height": signed_farmer_value(farmer, with_height(record, 8, now), value.seq + 1),
        "a time a minute away": signed_farmer_value(farmer, with_height(record, 7, now + 60), value.seq + 1),
        "the same seq": signed_farmer_value(farmer, with_height(record, 7, now), value.seq),
        "another farmer's record": next_signed(stranger, None, registered(stranger.node_id, record.payout_addr, now)),
        "another payout": signed_farmer_value(
            farmer, replace(with_height(record, 7, now), payout_addr=node_address(stranger.node_id)), value.seq + 1
        ),
    }
    for name, signed in refused.items():
        with pytest.raises(BadFarmerRecord):
            await registry.change(farmer.node_id, height_7, signed)
        assert (await registry.find(farmer.node_id) or (None, None))[0] == value, name
    accepted = await registry.change(
        farmer.node_id, height_7, signed_farmer_value(farmer, with_height(record, 7, now), value.seq + 1)
    )
    assert accepted.height == 7
    # A ping within the minute changes nothing, so it needs no signed record.
    assert await registry.change(farmer.node_id, pinged, None) == accepted


async def test_a_farming_node_registers_itself_reports_its_height_and_keeps_its_record_out(
    registries: list[FarmerRegistry],
) -> None:
    node = registries[1].node
    agent = FarmerAgent(registries[1], height=5, interval=0.1, ip="127.0.0.1")
    first = await agent.step()
    assert (first.node_id, first.height, first.ip) == (node.node_id, 5, "127.0.0.1")
    assert await agent.step() == first  # within the minute: the same record, announced again
    for registry in registries:
        assert await listed(registry, node.identity, height=5)
    held = [other for other in registries if other.node.store.get(farmer_key(node.node_id))]
    assert len(held) == len(registries)


async def test_notices_from_a_peer_the_node_did_not_subscribe_to_are_ignored(
    registries: list[FarmerRegistry],
) -> None:
    """Anyone can replay a farmer's signed record as "expired", or push a record no replica holds;
    only the replicas a listener subscribed to are heard."""
    farmer, sybil = Identity.generate(), Identity.generate()
    viewer = registries[3]
    await register(registries[0], farmer)
    await eventually(lambda: listed(viewer, farmer))
    value, _ = await viewer.find(farmer.node_id) or (None, None)
    assert value is not None
    unstored = next_signed(sybil, None, registered(sybil.node_id, node_address(sybil.node_id), int(time.time())))
    assert unstored is not None
    outsider = await start_node(FAST)
    try:
        await outsider.join([viewer.node.address])
        for key, sent, expired in (
            (farmer_key(farmer.node_id), value, True),
            (farmer_key(sybil.node_id), unstored, False),
        ):
            body = {"k": key, "v": sent.to_wire(), "x": expired}
            reply = await outsider.endpoint.call(viewer.node.address, "dm_notify", body)
            assert reply.payload is False
    finally:
        await outsider.stop()
    await asyncio.sleep(0.2)
    assert await listed(viewer, farmer) and not await listed(viewer, sybil)


async def test_a_ping_a_minute_after_the_last_sighting_is_seen_by_every_node(registries: list[FarmerRegistry]) -> None:
    """The ping that changes something: last_seen moves and the time since counts as uptime."""
    farmer = Identity.generate()
    registered_at = int(time.time()) - 61
    earlier = FarmerRegistry(registries[0].node, clock=lambda: registered_at)
    payout = node_address(farmer.node_id)
    record = registered(farmer.node_id, payout, registered_at)
    await earlier.register(farmer.node_id, payout, next_signed(farmer, None, record))
    current = await registries[1].find(farmer.node_id)
    assert current is not None and current[1] == record
    now = int(time.time())
    after = pinged(record, now)
    assert (after.last_seen, after.uptime) == (now, now - registered_at)  # dataserv's rule: >= 60 s later
    assert await registries[1].change(farmer.node_id, pinged, next_signed(farmer, current, after)) == after
    for viewer in registries:
        await eventually(lambda viewer=viewer: _seen_at(viewer, farmer, now))


async def _seen_at(registry: FarmerRegistry, farmer: Identity, when: int) -> bool:
    return any(r.node_id == farmer.node_id and r.last_seen == when for r in await registry.farmers())


async def test_the_view_drops_a_record_past_its_life_even_without_an_expiry_notice(
    registries: list[FarmerRegistry],
) -> None:
    farmer = Identity.generate()
    clock = [time.time()]
    viewer = FarmerRegistry(registries[1].node, clock=lambda: clock[0])
    try:
        await register(registries[0], farmer)
        await eventually(lambda: listed(viewer, farmer))
        clock[0] += FARMER_RECORD_EXPIRY + 3600  # no replica expired it (their clocks did not move)
        assert not await listed(viewer, farmer)
    finally:
        await viewer.close()


async def test_who_may_audit_is_a_registered_farmer_whose_record_is_alive(registries: list[FarmerRegistry]) -> None:
    """`is_registered` is what a farmer's chunk port asks before it answers a challenge."""
    farmer, stranger = Identity.generate(), Identity.generate()
    clock = [time.time()]
    viewer = FarmerRegistry(registries[2].node, clock=lambda: clock[0])
    try:
        await register(registries[0], farmer)
        await eventually(lambda: viewer.is_registered(farmer.node_id))
        assert not await viewer.is_registered(stranger.node_id)
        clock[0] += FARMER_RECORD_EXPIRY + 3600  # past its life, even with no expiry notice yet
        assert not await viewer.is_registered(farmer.node_id)
    finally:
        await viewer.close()
