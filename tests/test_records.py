"""Farmer records: only the farmer can write its record, and every node refuses a forged one, whether
put locally, stored over UDP by a peer, or met in a get."""

import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.records import (
    DIRECTORY_KEYS,
    FARMER_VALUE_TYPE,
    FarmerRecord,
    InvalidRecord,
    check_value,
    farmer_key,
    farmer_value_id,
    is_valid_successor,
)
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, decode_farmer
from dhtmesh.node.storage.store import ValueStore
from dhtmesh.node.values import InvalidValue, Value, sign_value
from dhtmesh.node.values.policy import Verdict

from conftest import MeshFactory


def record_of(farmer: Identity, **changes: object) -> FarmerRecord:
    now = int(time.time())
    record = FarmerRecord(farmer.node_id, node_address(farmer.node_id), now - 100, now, height=7, uptime=60)
    return replace(record, **changes)


def farmer_value(signer: Identity, record: FarmerRecord, key: bytes | None = None, seq: int = 1) -> Value:
    value = Value(farmer_value_id(record.node_id), record.encode(), FARMER_VALUE_TYPE, seq=seq)
    return sign_value(signer, key or farmer_key(record.node_id), value)


def _mistyped(address: str) -> str:
    """The address with its last character changed (to "x", or "y" where it was "x" already: an address
    of a random identity ending in "x" stayed valid, one run in 58)."""
    return address[:-1] + ("y" if address.endswith("x") else "x")


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
        "in another shard": (
            farmer,
            record_of(farmer),
            next(k for k in DIRECTORY_KEYS if k != farmer_key(farmer.node_id)),
        ),
        "height over the limit": (farmer, record_of(farmer, height=HEIGHT_LIMIT + 1), None),
        "bad payout checksum": (farmer, record_of(farmer, payout_addr=_mistyped(node_address(farmer.node_id))), None),
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


def test_a_record_must_be_signed_under_its_farmers_value_id() -> None:
    farmer = Identity.generate()
    key = farmer_key(farmer.node_id)
    unsigned = Value(farmer_value_id(farmer.node_id), record_of(farmer).encode(), FARMER_VALUE_TYPE)
    other_id = sign_value(farmer, key, replace(unsigned, id=2))
    for value in (unsigned, other_id):
        with pytest.raises(InvalidRecord):
            check_value(key, value)


@given(st.binary(max_size=300))
def test_arbitrary_data_under_the_farmer_type_never_escapes_as_another_error(data: bytes) -> None:
    farmer = Identity.generate()
    key = farmer_key(farmer.node_id)
    try:
        value = Value(farmer_value_id(farmer.node_id), data, FARMER_VALUE_TYPE, seq=1)
        check_value(key, sign_value(farmer, key, value))
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
    # (the shard may hold the genuine farmer's record: 16 shards)
    assert all(mallory.public_key not in {v.owner for v in node.store.get(claimed_key)} for node in nodes)
    assert sum(node.counters.get("refused_requests") for node in nodes[:-1]) == refused_before + 3


def test_farmers_are_sharded_by_the_first_hex_digit_of_their_id() -> None:
    assert len(set(DIRECTORY_KEYS)) == 16
    for digit in range(16):
        node_id = bytes([digit << 4 | 0x0F]) + bytes(19)
        assert farmer_key(node_id) == DIRECTORY_KEYS[digit]


def test_a_directory_key_holds_farmer_records_only() -> None:
    """Closes squatting: an unsigned value (or any other type) taking a farmer's id, or filling a shard."""
    farmer = Identity.generate()
    key = farmer_key(farmer.node_id)
    squatter = Value(farmer_value_id(farmer.node_id), b"mine now", 0)
    with pytest.raises(InvalidRecord):
        check_value(key, squatter)
    with pytest.raises(InvalidRecord):
        check_value(key, sign_value(Identity.generate(), key, replace(squatter, seq=1)))


def successor_cases() -> dict[str, tuple[dict, bool]]:
    return {
        "a ping: seen later, uptime grows by less than the time passed": ({"last_seen": 60, "uptime": 60}, True),
        "a height report": ({"last_seen": 10, "height": 9}, True),
        "uptime grows more than the time passed": ({"last_seen": 10, "uptime": 20}, False),
        "uptime shrinks": ({"last_seen": 10, "uptime": -1}, False),
        "seen earlier than before": ({"last_seen": -5}, False),
        "registration time rewritten": ({"reg_time": -50}, False),
        "payout rewritten": ({"payout_addr": None}, False),
    }


@pytest.mark.parametrize("case", list(successor_cases()))
def test_a_replica_holding_a_record_accepts_only_a_valid_successor(case: str) -> None:
    changes, valid = successor_cases()[case]
    farmer = Identity.generate()
    current = record_of(farmer, reg_time=int(time.time()) - 1000, last_seen=int(time.time()) - 100)
    fields = {name: getattr(current, name) + delta for name, delta in changes.items() if name != "payout_addr"}
    if "payout_addr" in changes:
        fields["payout_addr"] = node_address(Identity.generate().node_id)
    incoming = replace(current, **fields)
    assert is_valid_successor(farmer_value(farmer, current, seq=1), farmer_value(farmer, incoming, seq=2)) is valid


def test_the_store_refuses_a_record_that_cannot_follow_the_one_it_holds(tmp_path: Path) -> None:
    farmer = Identity.generate()
    key = farmer_key(farmer.node_id)
    current = record_of(farmer, reg_time=int(time.time()) - 1000, last_seen=int(time.time()) - 100)
    store = ValueStore(tmp_path / "values.sqlite3", may_follow=is_valid_successor)
    assert store.put(key, farmer_value(farmer, current, seq=1), origin="a", ttl=60) is Verdict.NEW
    inflated = replace(current, last_seen=current.last_seen + 10, uptime=current.uptime + 1000)
    assert store.put(key, farmer_value(farmer, inflated, seq=2), origin="a", ttl=60) is Verdict.REFUSE_NOT_SUCCESSOR
    pinged_later = replace(current, last_seen=current.last_seen + 60, uptime=current.uptime + 60)
    assert store.put(key, farmer_value(farmer, pinged_later, seq=3), origin="a", ttl=60) is Verdict.UPDATE
