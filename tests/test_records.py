"""Farmer records: only the farmer can write its record, and every node refuses a forged one, whether
put locally, stored over UDP by a peer, or met in a get."""

import time
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.records import FARMER_VALUE_TYPE, FarmerRecord, InvalidRecord, check_value, farmer_key
from dhtmesh.node.records.farmer import FARMER_VALUE_ID, HEIGHT_LIMIT, decode_farmer
from dhtmesh.node.values import InvalidValue, Value, sign_value

from conftest import MeshFactory


def record_of(farmer: Identity, **changes: object) -> FarmerRecord:
    now = int(time.time())
    record = FarmerRecord(farmer.node_id, node_address(farmer.node_id), now - 100, now, height=7, uptime=60)
    return replace(record, **changes)


def farmer_value(signer: Identity, record: FarmerRecord, key: bytes | None = None, seq: int = 1) -> Value:
    value = Value(FARMER_VALUE_ID, record.encode(), FARMER_VALUE_TYPE, seq=seq)
    return sign_value(signer, key or farmer_key(record.node_id), value)


def test_a_farmer_signs_its_own_record_and_any_node_reads_it_back() -> None:
    farmer = Identity.generate()
    record = record_of(farmer, ip="127.0.0.1", bandwidth_upload=5, bandwidth_download=9)
    value = farmer_value(farmer, record)
    check_value(farmer_key(farmer.node_id), value)
    assert decode_farmer(value.data) == record


def forged_cases() -> dict[str, tuple[Identity, FarmerRecord, bytes | None]]:
    farmer, mallory = Identity.generate(), Identity.generate()
    return {
        "signed by another key": (mallory, record_of(farmer), None),
        "under another farmer's key": (farmer, record_of(farmer), farmer_key(mallory.node_id)),
        "height over the limit": (farmer, record_of(farmer, height=HEIGHT_LIMIT + 1), None),
        "bad payout checksum": (farmer, record_of(farmer, payout_addr=node_address(farmer.node_id)[:-1] + "x"), None),
        "uptime beyond registration": (farmer, record_of(farmer, uptime=10_000), None),
        "seen before registered": (farmer, record_of(farmer, last_seen=0), None),
        "ip a name": (farmer, record_of(farmer, ip="example.com"), None),
        "negative height": (farmer, record_of(farmer, height=-1), None),
        "seen in the future": (farmer, record_of(farmer, last_seen=int(time.time()) + 3600), None),
    }


@pytest.mark.parametrize("case", list(forged_cases()))
def test_a_forged_or_malformed_record_is_refused(case: str) -> None:
    signer, record, key = forged_cases()[case]
    value = farmer_value(signer, record, key)
    with pytest.raises(InvalidRecord):
        check_value(key or farmer_key(record.node_id), value)


def test_a_record_must_be_signed_value_one_in_the_clear() -> None:
    farmer = Identity.generate()
    key = farmer_key(farmer.node_id)
    unsigned = Value(FARMER_VALUE_ID, record_of(farmer).encode(), FARMER_VALUE_TYPE)
    other_id = sign_value(farmer, key, replace(unsigned, id=2))
    for value in (unsigned, other_id):
        with pytest.raises(InvalidRecord):
            check_value(key, value)


@given(st.binary(max_size=300))
def test_arbitrary_data_under_the_farmer_type_never_escapes_as_another_error(data: bytes) -> None:
    farmer = Identity.generate()
    key = farmer_key(farmer.node_id)
    try:
        check_value(key, sign_value(farmer, key, Value(FARMER_VALUE_ID, data, FARMER_VALUE_TYPE, seq=1)))
    except InvalidRecord:
        return
    assert decode_farmer(data).node_id == farmer.node_id


async def test_every_node_refuses_a_forged_record_pushed_over_udp_and_serves_the_real_one(
    make_mesh: MeshFactory,
) -> None:
    nodes = await make_mesh(4)
    farmer, mallory = Identity.generate(), Identity.generate()
    key = farmer_key(farmer.node_id)
    genuine = farmer_value(farmer, record_of(farmer, height=3))
    assert (await nodes[0].put(key, genuine)).replicas == 3

    # Mallory rewrites the farmer's height and signs it herself, with a higher seq, and sends it
    # straight to every replica with dm_store (her node skips its own checks: store_on just sends).
    forged = farmer_value(mallory, record_of(farmer, height=HEIGHT_LIMIT), seq=9)
    attacker = nodes[-1]
    for target in nodes[:-1]:
        assert await attacker.store_on(target.contact, key, forged, 600.0) is False
    assert all(node.store.get(key) == [genuine] for node in nodes)
    with pytest.raises(InvalidValue):
        await attacker.put(key, forged)
    for node in nodes:
        assert await node.get(key) == [genuine]

    # A farmer that never registered: no stored record stands in the way, only the record rule does.
    absent = Identity.generate()
    claimed_key, claimed = farmer_key(absent.node_id), farmer_value(mallory, record_of(absent))
    refused_before = sum(node.counters.get("refused_requests") for node in nodes[:-1])
    for target in nodes[:-1]:
        assert await attacker.store_on(target.contact, claimed_key, claimed, 600.0) is False
    assert all(node.store.get(claimed_key) == [] for node in nodes)
    assert sum(node.counters.get("refused_requests") for node in nodes[:-1]) == refused_before + 3
