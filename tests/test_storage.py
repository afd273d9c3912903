"""node/storage/store.py: the SQLite value store, its edit policy, quotas, expiry and persistence."""

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtmesh.crypto import Identity
from dhtmesh.node.storage import Quotas, ValueStore
from dhtmesh.node.storage.store import LOCAL_ORIGIN, ROW_OVERHEAD, stock_origin
from dhtmesh.node.values import Value, Verdict, sign_value

KEY = b"k" * 20
OTHER_KEY = b"q" * 20
ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
TTL = 600.0
PEER_A = "10.0.0.1:4222"
PEER_B = "10.0.0.2:4222"
PEER_C = "10.0.0.3:4222"


def signed(value_id: int, data: bytes = b"data", *, seq: int = 1, owner: Identity = ALICE, key: bytes = KEY) -> Value:
    return sign_value(owner, key, Value(value_id, data, seq=seq))


def unsigned(value_id: int, data: bytes = b"data") -> Value:
    return Value(value_id, data)


def charge_of(value: Value) -> int:
    return value.size + ROW_OVERHEAD


def charges_by_origin(path: Path) -> dict[str, int]:
    """What the file says each origin is charged, read with a separate connection."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT origin, SUM(charge) FROM vals GROUP BY origin").fetchall())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "values.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[ValueStore]:
    opened = ValueStore(db_path)
    yield opened
    opened.close()


def open_store(path: Path, quotas: Quotas | None = None) -> ValueStore:
    return ValueStore(path, quotas)


# ---- basic reads and writes -----------------------------------------------------------------------


def test_put_then_get(store: ValueStore) -> None:
    value = signed(1)
    assert store.put(KEY, value, origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert store.get(KEY) == [value]
    assert store.get(OTHER_KEY) == []
    assert store.keys() == [KEY]


def test_get_one_and_versions(store: ValueStore) -> None:
    values = [signed(1, seq=4), signed(2, seq=9, owner=BOB), unsigned(3)]
    for value in values:
        assert store.put(KEY, value, origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert store.get_one(KEY, ALICE.public_key, 1) == values[0]
    assert store.get_one(KEY, BOB.public_key, 2) == values[1]
    assert store.get_one(KEY, b"", 3) == values[2]
    assert store.get_one(KEY, BOB.public_key, 1) is None
    assert store.get_one(OTHER_KEY, ALICE.public_key, 1) is None
    assert store.versions(KEY) == {(ALICE.public_key, 1): 4, (BOB.public_key, 2): 9, (b"", 3): 0}
    assert store.versions(OTHER_KEY) == {}


def test_same_id_under_different_keys_is_independent(store: ValueStore) -> None:
    assert store.put(KEY, unsigned(1, b"one"), origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert store.put(OTHER_KEY, unsigned(1, b"two"), origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert store.get(KEY) == [unsigned(1, b"one")]
    assert store.get(OTHER_KEY) == [unsigned(1, b"two")]


def test_signed_update_replaces_the_stored_version(store: ValueStore) -> None:
    store.put(KEY, signed(1, b"old", seq=1), origin=PEER_A, ttl=TTL)
    newer = signed(1, b"new", seq=2)
    assert store.put(KEY, newer, origin=PEER_A, ttl=TTL) is Verdict.UPDATE
    assert store.get(KEY) == [newer]
    assert store.versions(KEY) == {(ALICE.public_key, 1): 2}


def test_values_from_pages_through_everything_once(store: ValueStore) -> None:
    ids = [5, 1, 1 << 63, 9, (1 << 64) - 1, 2, 77, 3]
    for value_id in ids:
        store.put(KEY, unsigned(value_id), origin=PEER_A, ttl=TTL)
    for value_id in ids[:3]:
        store.put(KEY, signed(value_id + 100, owner=BOB), origin=PEER_A, ttl=TTL)
    everything = store.get(KEY)
    assert len(everything) == len(ids) + 3
    for page_size in (1, 2, 3, 4, 100):
        pages = [store.values_from(KEY, offset, page_size) for offset in range(0, len(everything), page_size)]
        assert all(len(page) <= page_size for page in pages)
        assert [value for page in pages for value in page] == everything
    assert store.values_from(KEY, len(everything), 10) == []


def test_values_from_order_is_stable_across_calls(store: ValueStore) -> None:
    for value_id in range(1, 30):
        store.put(KEY, unsigned(value_id * 7919), origin=PEER_A, ttl=TTL)
    first = store.values_from(KEY, 5, 10)
    store.put(OTHER_KEY, unsigned(1), origin=PEER_A, ttl=TTL)
    assert store.values_from(KEY, 5, 10) == first


@pytest.mark.parametrize("value_id", [1 << 63, (1 << 63) + 1, (1 << 64) - 1])
def test_ids_above_2_63_round_trip(store: ValueStore, value_id: int) -> None:
    value = signed(value_id)
    assert store.put(KEY, value, origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert store.get_one(KEY, ALICE.public_key, value_id) == value
    assert store.get(KEY) == [value]
    assert store.versions(KEY) == {(ALICE.public_key, value_id): 1}
    assert store.put(KEY, value, origin=PEER_A, ttl=TTL) is Verdict.HELD  # an unknown sender holds, never refreshes
    assert store.remaining_ttl(KEY, value) > TTL - 5
    assert store.expire(now=time.time() + 2 * TTL) == [(KEY, value)]


def test_big_and_small_ids_do_not_collide(store: ValueStore) -> None:
    small, big = unsigned(1, b"small"), unsigned((1 << 64) - 1, b"big")
    assert store.put(KEY, small, origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert store.put(KEY, big, origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert {value.id for value in store.get(KEY)} == {1, (1 << 64) - 1}


def test_latest_unsigned(store: ValueStore) -> None:
    assert store.latest_unsigned(KEY) is None
    store.put(KEY, signed(1), origin=PEER_A, ttl=TTL)
    assert store.latest_unsigned(KEY) is None
    store.put(KEY, unsigned(2, b"first"), origin=PEER_A, ttl=TTL)
    time.sleep(0.002)
    store.put(KEY, unsigned(3, b"second"), origin=PEER_A, ttl=TTL)
    assert store.latest_unsigned(KEY) == unsigned(3, b"second")


# ---- policy refusals ------------------------------------------------------------------------------


def test_policy_refusals_are_verdicts(store: ValueStore, db_path: Path) -> None:
    original_unsigned, original_signed = unsigned(1, b"original"), signed(2, b"v3", seq=3)
    store.put(KEY, original_unsigned, origin=PEER_A, ttl=TTL)
    store.put(KEY, original_signed, origin=PEER_A, ttl=TTL)
    attempts = {
        Verdict.REFUSE_EDIT_UNSIGNED: unsigned(1, b"edited"),
        Verdict.REFUSE_STALE: signed(2, b"v2", seq=2),
        Verdict.REFUSE_ID_TAKEN: signed(1, owner=BOB),
    }
    for expected, attempt in attempts.items():
        assert store.put(KEY, attempt, origin=PEER_B, ttl=TTL) is expected
    assert store.put(KEY, signed(2, b"other v3", seq=3), origin=PEER_B, ttl=TTL) is Verdict.REFUSE_STALE
    assert store.put(KEY, unsigned(2), origin=PEER_B, ttl=TTL) is Verdict.REFUSE_ID_TAKEN
    assert store.get(KEY) == [original_signed, original_unsigned]  # signed values first
    assert PEER_B not in charges_by_origin(db_path)


STORER, STRANGER = b"s" * 20, b"x" * 20


def test_only_the_storer_refreshes_and_never_shortens_expiry(store: ValueStore) -> None:
    value = unsigned(1)
    store.put(KEY, value, origin=PEER_A, ttl=100, sender=STORER)
    assert store.put(KEY, value, origin=PEER_B, ttl=1000, sender=STRANGER) is Verdict.HELD
    assert store.remaining_ttl(KEY, value) <= 100  # a stranger re-sending the same bytes changes nothing
    assert store.put(KEY, value, origin=PEER_A, ttl=1000, sender=STORER) is Verdict.REFRESH
    assert 990 < store.remaining_ttl(KEY, value) <= 1000
    assert store.put(KEY, value, origin=PEER_A, ttl=10, sender=STORER) is Verdict.REFRESH
    assert store.remaining_ttl(KEY, value) > 990
    assert store.remaining_ttl(KEY, unsigned(2)) == 0.0


def test_the_owner_and_this_node_refresh_too(store: ValueStore) -> None:
    owned = signed(1)
    store.put(KEY, owned, origin=PEER_A, ttl=100, sender=STORER)
    assert store.put(KEY, owned, origin=PEER_B, ttl=1000, sender=ALICE.node_id) is Verdict.REFRESH
    assert store.remaining_ttl(KEY, owned) > 990
    mine = unsigned(2)
    store.put(KEY, mine, origin=PEER_A, ttl=100, sender=STORER)
    store.put(KEY, mine, origin=LOCAL_ORIGIN, ttl=1000)
    assert store.remaining_ttl(KEY, mine) > 990


def test_a_hand_off_passes_on_who_may_refresh(store: ValueStore) -> None:
    value = unsigned(1)
    store.put(KEY, value, origin=PEER_A, ttl=100, sender=STRANGER, by=STORER)
    store.put(KEY, value, origin=PEER_A, ttl=1000, sender=STRANGER)
    assert store.remaining_ttl(KEY, value) <= 100  # the relaying peer is not the storer it named
    store.put(KEY, value, origin=PEER_B, ttl=1000, sender=STORER)
    assert store.remaining_ttl(KEY, value) > 990


def test_an_expired_value_cannot_be_put_back_by_a_stranger(store: ValueStore) -> None:
    value, plain = signed(1, seq=3), unsigned(2)
    store.put(KEY, value, origin=PEER_A, ttl=60, sender=STORER)
    store.put(KEY, plain, origin=PEER_A, ttl=60, sender=STORER)
    assert len(store.expire(now=time.time() + 61)) == 2
    assert store.put(KEY, value, origin=PEER_B, ttl=60, sender=STRANGER) is Verdict.REFUSE_EXPIRED
    assert store.put(KEY, signed(1, seq=2), origin=PEER_B, ttl=60, sender=STRANGER) is Verdict.REFUSE_EXPIRED
    assert store.put(KEY, plain, origin=PEER_B, ttl=60, sender=STRANGER) is Verdict.REFUSE_EXPIRED  # unsigned too
    assert store.put(KEY, plain, origin=PEER_A, ttl=60, sender=STORER) is Verdict.NEW  # by its storer, again
    assert store.put(KEY, value, origin=PEER_A, ttl=60, sender=STORER) is Verdict.NEW
    assert store.expire(now=time.time() + 61)
    assert store.put(KEY, signed(1, b"v4", seq=4), origin=PEER_B, ttl=60, sender=STRANGER) is Verdict.NEW
    other = signed(5, key=OTHER_KEY)
    store.put(OTHER_KEY, other, origin=PEER_A, ttl=60, sender=STORER)
    later = time.time() + 61
    store.expire(now=later)
    store.expire(now=later + TTL + 1)  # a tombstone goes after a lifetime of the value's type
    assert store.put(OTHER_KEY, other, origin=PEER_B, ttl=60, sender=STRANGER) is Verdict.NEW


# ---- expiry ---------------------------------------------------------------------------------------


def test_expire_returns_and_deletes_expired_values(store: ValueStore) -> None:
    short, long_lived = unsigned(1, b"short"), signed(2, b"long")
    store.put(KEY, short, origin=PEER_A, ttl=1)
    store.put(OTHER_KEY, long_lived, origin=PEER_A, ttl=TTL)
    now = time.time()
    assert store.expire(now=now) == []
    assert store.expire(now=now + 10) == [(KEY, short)]
    assert store.get(KEY) == []
    assert store.get(OTHER_KEY) == [long_lived]
    assert store.expire(now=now + 10) == []
    assert store.expire(now=now + 2 * TTL) == [(OTHER_KEY, long_lived)]
    assert store.counts()["storage_values"] == 0


def test_expire_frees_quota(db_path: Path) -> None:
    value = unsigned(1, b"x" * 500)
    store = open_store(db_path, Quotas(max_remote_bytes=charge_of(value), peer_share=1.0))
    try:
        assert store.put(KEY, value, origin=PEER_A, ttl=1) is Verdict.NEW
        assert store.put(KEY, unsigned(2, b"x" * 500), origin=PEER_A, ttl=TTL) is Verdict.REFUSE_STORE_FULL
        store.expire(now=time.time() + 10)
        assert store.remote_bytes == 0
        assert store.put(KEY, unsigned(2, b"x" * 500), origin=PEER_A, ttl=TTL) is Verdict.NEW
    finally:
        store.close()


# ---- quotas ---------------------------------------------------------------------------------------


def test_max_values_per_key(db_path: Path) -> None:
    store = open_store(db_path, Quotas(max_values_per_key=3, key_share=1.0))
    try:
        for value_id in (1, 2, 3):
            assert store.put(KEY, signed(value_id), origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, signed(4), origin=PEER_A, ttl=TTL) is Verdict.REFUSE_KEY_FULL
        assert store.put(KEY, unsigned(5), origin=LOCAL_ORIGIN, ttl=TTL) is Verdict.REFUSE_KEY_FULL
        assert store.put(KEY, signed(1, b"newer", seq=2), origin=PEER_A, ttl=TTL) is Verdict.UPDATE
        assert store.put(KEY, signed(2), origin=PEER_A, ttl=TTL) is Verdict.HELD
        assert store.put(OTHER_KEY, signed(4, key=OTHER_KEY), origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert len(store.get(KEY)) == 3
    finally:
        store.close()


def test_one_peer_host_fills_at_most_its_share_of_a_key(db_path: Path) -> None:
    store = open_store(db_path, Quotas(max_values_per_key=8, key_share=1 / 4))
    try:
        assert [store.put(KEY, unsigned(i), origin=PEER_A, ttl=TTL) for i in (1, 2, 3)] == [
            Verdict.NEW,
            Verdict.NEW,
            Verdict.REFUSE_KEY_SHARE,
        ]
        assert store.put(KEY, unsigned(3), origin=PEER_B, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, unsigned(1), origin=PEER_A, ttl=TTL) is Verdict.HELD  # what it holds stays
        assert store.put(OTHER_KEY, unsigned(4), origin=PEER_A, ttl=TTL) is Verdict.NEW  # per key
        for value_id in range(10, 16):
            store.put(KEY, signed(value_id), origin=LOCAL_ORIGIN, ttl=TTL)  # this node's own: no share
        assert len(store.get(KEY)) == 8
    finally:
        store.close()


def test_max_remote_bytes(db_path: Path) -> None:
    value = unsigned(1, b"x" * 300)
    store = open_store(db_path, Quotas(max_remote_bytes=2 * charge_of(value), peer_share=1.0))
    try:
        assert store.put(KEY, unsigned(1, b"x" * 300), origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, unsigned(2, b"x" * 300), origin=PEER_B, ttl=TTL) is Verdict.NEW
        assert store.remote_bytes == 2 * charge_of(value)
        assert store.put(KEY, unsigned(3, b"x"), origin=PEER_C, ttl=TTL) is Verdict.REFUSE_STORE_FULL
        assert store.get_one(KEY, b"", 3) is None
        assert store.remote_bytes == 2 * charge_of(value)
    finally:
        store.close()


def test_signed_update_that_grows_past_the_quota_is_refused(db_path: Path) -> None:
    small = signed(1, b"x" * 100)
    store = open_store(db_path, Quotas(max_remote_bytes=charge_of(small) + 50, peer_share=1.0))
    try:
        assert store.put(KEY, small, origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, signed(1, b"x" * 140, seq=2), origin=PEER_A, ttl=TTL) is Verdict.UPDATE
        assert store.put(KEY, signed(1, b"x" * 200, seq=3), origin=PEER_A, ttl=TTL) is Verdict.REFUSE_STORE_FULL
        assert store.get(KEY) == [signed(1, b"x" * 140, seq=2)]
    finally:
        store.close()


def test_peer_share(db_path: Path) -> None:
    value = unsigned(1, b"x" * 300)
    store = open_store(db_path, Quotas(max_remote_bytes=4 * charge_of(value), peer_share=0.5))
    try:
        assert store.put(KEY, unsigned(1, b"x" * 300), origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, unsigned(2, b"x" * 300), origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, unsigned(3, b"x"), origin=PEER_A, ttl=TTL) is Verdict.REFUSE_PEER_QUOTA
        assert store.put(KEY, unsigned(4, b"x" * 300), origin=PEER_B, ttl=TTL) is Verdict.NEW
        assert store.remote_bytes == 3 * charge_of(value)
    finally:
        store.close()


def test_local_origin_is_not_charged_to_remote_quota(db_path: Path) -> None:
    value = unsigned(1, b"x" * 300)
    quotas = Quotas(max_remote_bytes=charge_of(value), max_local_bytes=10 * charge_of(value), peer_share=1.0)
    store = open_store(db_path, quotas)
    try:
        for value_id in range(1, 6):
            assert store.put(KEY, unsigned(value_id, b"x" * 300), origin=LOCAL_ORIGIN, ttl=TTL) is Verdict.NEW
        assert store.remote_bytes == 0
        assert store.put(KEY, unsigned(10, b"x" * 300), origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert store.remote_bytes == charge_of(value)
        counts = store.counts()
        assert counts["local_storage_values"] == 5
        assert counts["local_storage_size"] == 5 * charge_of(value)
        assert counts["storage_values"] == 6
        assert counts["storage_size"] == 6 * charge_of(value)
    finally:
        store.close()


def test_max_local_bytes(db_path: Path) -> None:
    value = unsigned(1, b"x" * 300)
    store = open_store(db_path, Quotas(max_local_bytes=2 * charge_of(value)))
    try:
        assert store.put(KEY, unsigned(1, b"x" * 300), origin=LOCAL_ORIGIN, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, unsigned(2, b"x" * 300), origin=LOCAL_ORIGIN, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, unsigned(3, b"x"), origin=LOCAL_ORIGIN, ttl=TTL) is Verdict.REFUSE_STORE_FULL
        assert store.put(KEY, unsigned(3, b"x"), origin=PEER_A, ttl=TTL) is Verdict.NEW
    finally:
        store.close()


def test_local_update_cannot_grow_past_max_local_bytes(db_path: Path) -> None:
    """A local signed update is admitted without any quota check (`put` skips `_admit_growth` for the local
    origin), so repeated updates can grow local storage without bound."""
    small = signed(1, b"x" * 10)
    store = open_store(db_path, Quotas(max_local_bytes=charge_of(small) + 100))
    try:
        assert store.put(KEY, small, origin=LOCAL_ORIGIN, ttl=TTL) is Verdict.NEW
        bigger = signed(1, b"x" * 50_000, seq=2)
        assert store.put(KEY, bigger, origin=LOCAL_ORIGIN, ttl=TTL) is Verdict.REFUSE_STORE_FULL
        assert store.counts()["local_storage_size"] <= store.quotas.max_local_bytes
    finally:
        store.close()


def test_remote_update_of_a_local_value_respects_max_remote_bytes(db_path: Path) -> None:
    """The growth of an update is measured against the stored version, but the whole charge moves to the
    new origin: a peer relaying an update of a value this node stored locally adds its full size to the
    remote total, which the check does not see."""
    mine = signed(1, b"x" * 300)
    store = open_store(db_path, Quotas(max_remote_bytes=charge_of(mine) + 100, peer_share=1.0))
    try:
        assert store.put(KEY, mine, origin=LOCAL_ORIGIN, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, signed(2, b"x" * 300, owner=BOB), origin=PEER_A, ttl=TTL) is Verdict.NEW
        store.put(KEY, signed(1, b"y" * 300, seq=2), origin=PEER_B, ttl=TTL)
        assert store.remote_bytes <= store.quotas.max_remote_bytes
    finally:
        store.close()


def test_update_relayed_by_another_peer_respects_its_share(db_path: Path) -> None:
    """Same accounting flaw, per peer: B relays an update of A's value and is charged the whole value while
    only the (zero) growth was checked against B's share."""
    value = signed(1, b"x" * 300)
    store = open_store(db_path, Quotas(max_remote_bytes=4 * charge_of(value), peer_share=0.25))
    try:
        assert store.put(KEY, value, origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, signed(2, b"x" * 300, owner=BOB), origin=PEER_B, ttl=TTL) is Verdict.NEW
        store.put(KEY, signed(1, b"y" * 300, seq=2), origin=PEER_B, ttl=TTL)
        share = store.quotas.max_remote_bytes * store.quotas.peer_share
        assert all(charge <= share for charge in charges_by_origin(db_path).values())
    finally:
        store.close()


# ---- announces ------------------------------------------------------------------------------------


def test_announces_add_list_remove(store: ValueStore) -> None:
    first, second, big = signed(1), unsigned(2), signed((1 << 64) - 1, owner=BOB, key=OTHER_KEY)
    store.add_announce(KEY, first)
    store.add_announce(KEY, second)
    store.add_announce(OTHER_KEY, big)
    assert sorted(store.announces(), key=repr) == sorted([(KEY, first), (KEY, second), (OTHER_KEY, big)], key=repr)
    newer = signed(1, b"newer", seq=2)
    store.add_announce(KEY, newer)
    assert (KEY, newer) in store.announces()
    assert (KEY, first) not in store.announces()
    assert store.remove_announce(KEY, 1)
    assert not store.remove_announce(KEY, 1)
    assert not store.remove_announce(OTHER_KEY, 2)
    assert store.remove_announce(OTHER_KEY, (1 << 64) - 1)
    assert store.announces() == [(KEY, second)]


def test_announces_are_separate_from_stored_values(store: ValueStore) -> None:
    store.add_announce(KEY, signed(1))
    assert store.get(KEY) == []
    store.put(KEY, signed(1), origin=LOCAL_ORIGIN, ttl=TTL)
    store.expire(now=time.time() + 2 * TTL)
    assert store.announces() == [(KEY, signed(1))]


# ---- persistence ----------------------------------------------------------------------------------


def test_everything_survives_close_and_reopen(db_path: Path) -> None:
    quotas = Quotas(max_remote_bytes=10_000, peer_share=0.5)
    values = {
        KEY: [signed(1, seq=5), unsigned(2), signed((1 << 64) - 1, owner=BOB)],
        OTHER_KEY: [signed(3, b"o" * 1000, key=OTHER_KEY)],
    }
    store = open_store(db_path, quotas)
    for key, stored in values.items():
        for value in stored:
            assert store.put(key, value, origin=PEER_A, ttl=TTL) is Verdict.NEW
    store.put(KEY, unsigned(9, b"mine"), origin=LOCAL_ORIGIN, ttl=TTL)
    store.add_announce(KEY, unsigned(9, b"mine"))
    store.add_announce(OTHER_KEY, signed((1 << 63) + 5, key=OTHER_KEY))
    before = (store.get(KEY), store.get(OTHER_KEY), store.versions(KEY), store.counts(), store.remote_bytes)
    announces = sorted(store.announces(), key=repr)
    store.close()

    reopened = open_store(db_path, quotas)
    try:
        after = (reopened.get(KEY), reopened.get(OTHER_KEY), reopened.versions(KEY), reopened.counts())
        assert after == before[:4]
        assert sorted(reopened.keys()) == sorted([KEY, OTHER_KEY])
        assert sorted(reopened.announces(), key=repr) == announces
        assert reopened.remote_bytes == before[4] == sum(charge_of(v) for vs in values.values() for v in vs)
        assert 0 < reopened.remaining_ttl(KEY, unsigned(2)) <= TTL
    finally:
        reopened.close()


def test_quota_accounting_is_rebuilt_on_reopen(db_path: Path) -> None:
    value = unsigned(1, b"x" * 300)
    quotas = Quotas(max_remote_bytes=4 * charge_of(value), peer_share=0.5)
    store = open_store(db_path, quotas)
    assert store.put(KEY, unsigned(1, b"x" * 300), origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert store.put(KEY, unsigned(2, b"x" * 300), origin=PEER_A, ttl=TTL) is Verdict.NEW
    assert store.put(KEY, unsigned(3, b"x" * 300), origin=PEER_B, ttl=TTL) is Verdict.NEW
    store.close()

    reopened = open_store(db_path, quotas)
    try:
        assert reopened.remote_bytes == 3 * charge_of(value)
        assert reopened.put(KEY, unsigned(4, b"x"), origin=PEER_A, ttl=TTL) is Verdict.REFUSE_PEER_QUOTA
        assert reopened.put(KEY, unsigned(5, b"x" * 300), origin=PEER_B, ttl=TTL) is Verdict.NEW
        assert reopened.put(KEY, unsigned(6, b"x"), origin=PEER_C, ttl=TTL) is Verdict.REFUSE_STORE_FULL
        reopened.expire(now=time.time() + 2 * TTL)
        assert reopened.remote_bytes == 0
        assert reopened.put(KEY, unsigned(7, b"x" * 300), origin=PEER_A, ttl=TTL) is Verdict.NEW
    finally:
        reopened.close()


def test_policy_still_applies_after_reopen(db_path: Path) -> None:
    store = open_store(db_path)
    store.put(KEY, signed(1, b"v5", seq=5), origin=PEER_A, ttl=TTL)
    store.put(KEY, unsigned(2, b"fixed"), origin=PEER_A, ttl=TTL)
    store.close()
    reopened = open_store(db_path)
    try:
        assert reopened.put(KEY, signed(1, b"v4", seq=4), origin=PEER_A, ttl=TTL) is Verdict.REFUSE_STALE
        assert reopened.put(KEY, unsigned(2, b"edited"), origin=PEER_A, ttl=TTL) is Verdict.REFUSE_EDIT_UNSIGNED
        assert reopened.put(KEY, signed(2, owner=BOB), origin=PEER_A, ttl=TTL) is Verdict.REFUSE_ID_TAKEN
        assert reopened.put(KEY, signed(1, b"v5", seq=5), origin=PEER_A, ttl=TTL) is Verdict.HELD
        assert reopened.put(KEY, signed(1, b"v6", seq=6), origin=PEER_A, ttl=TTL) is Verdict.UPDATE
    finally:
        reopened.close()


def test_in_memory_store_works_without_a_path() -> None:
    store = ValueStore(None)
    try:
        assert store.put(KEY, unsigned(1), origin=PEER_A, ttl=TTL) is Verdict.NEW
        assert store.get(KEY) == [unsigned(1)]
    finally:
        store.close()


def test_counts_are_kept_without_scanning_and_match_the_table(tmp_path: Path) -> None:
    path = tmp_path / "counted.sqlite3"
    store = ValueStore(path)
    key = b"c" * 20
    for index in range(1, 6):
        store.put(key, Value(index, b"x" * index), origin="10.0.0.1:1", ttl=600)
    store.put(key, Value(9, b"mine"), origin="local", ttl=600)
    store.put(key, Value(1, b"x"), origin="10.0.0.2:1", ttl=600)  # a refresh: no new row
    store.expire(now=time.time() + 3600)
    store.put(key, Value(10, b"late"), origin="10.0.0.1:1", ttl=600)

    def from_table(db_store: ValueStore) -> dict[str, int]:
        total, size = db_store._db.execute("SELECT COUNT(*), COALESCE(SUM(charge), 0) FROM vals").fetchone()
        local, local_size = db_store._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(charge), 0) FROM vals WHERE origin='local'"
        ).fetchone()
        return {
            "storage_values": total,
            "storage_size": size,
            "local_storage_values": local,
            "local_storage_size": local_size,
        }

    assert store.counts() == from_table(store) and store.counts()["storage_values"] == 1
    store.close()
    reopened = ValueStore(path)
    assert reopened.counts() == from_table(reopened)
    reopened.close()


def test_a_tombstone_lasts_as_long_as_its_value_was_held(store: ValueStore) -> None:
    value = signed(1)
    store.put(KEY, value, origin=PEER_A, ttl=2, sender=STORER)
    now = time.time()
    store.expire(now=now + 3)
    assert store.put(KEY, value, origin=PEER_B, ttl=60, sender=STRANGER) is Verdict.REFUSE_EXPIRED
    store.expire(now=now + 6)  # held ~2 s, so buried ~2 s: its tombstone is gone
    assert store.put(KEY, value, origin=PEER_B, ttl=60, sender=STRANGER) is Verdict.NEW


def test_tombstones_are_capped_the_soonest_ending_going_first(db_path: Path) -> None:
    store = open_store(db_path, Quotas(max_tombstones=3))
    try:
        values = [signed(value_id) for value_id in range(1, 6)]
        for index, value in enumerate(values):
            store.put(KEY, value, origin=PEER_A, ttl=10 + index, sender=STORER)
        store.expire(now=time.time() + 20)
        refused = [store.put(KEY, v, origin=PEER_B, ttl=60, sender=STRANGER) is Verdict.REFUSE_EXPIRED for v in values]
        assert refused == [False, False, True, True, True]  # the two held shortest were forgotten first
    finally:
        store.close()


def test_stock_peers_share_one_share_of_a_key(db_path: Path) -> None:
    store = open_store(db_path, Quotas(max_values_per_key=8, key_share=1 / 4))
    try:
        first, second = stock_origin("10.0.0.1"), stock_origin("10.9.9.9")  # spoofable: one share in all
        assert store.put(KEY, unsigned(1), origin=first, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, unsigned(2), origin=second, ttl=TTL) is Verdict.NEW
        assert store.put(KEY, unsigned(3), origin=second, ttl=TTL) is Verdict.REFUSE_KEY_SHARE
        assert store.put(KEY, unsigned(3), origin=PEER_A, ttl=TTL) is Verdict.NEW  # a proven host has its own
    finally:
        store.close()


def test_one_subnet_holds_at_most_its_share_whatever_its_hosts(db_path: Path) -> None:
    value = unsigned(1, b"x" * 300)
    store = open_store(db_path, Quotas(max_remote_bytes=8 * charge_of(value), peer_share=1 / 8, subnet_share=1 / 4))
    try:
        hosts = [f"10.0.0.{index}" for index in range(1, 6)]  # five hosts of one /24: one value each
        verdicts = [store.put(KEY, unsigned(i + 1, b"x" * 300), origin=h, ttl=TTL) for i, h in enumerate(hosts)]
        assert verdicts == [Verdict.NEW, Verdict.NEW, Verdict.REFUSE_PEER_QUOTA, Verdict.REFUSE_PEER_QUOTA,
                            Verdict.REFUSE_PEER_QUOTA]
        assert store.put(KEY, unsigned(9, b"x" * 300), origin="10.0.1.1", ttl=TTL) is Verdict.NEW  # next /24
    finally:
        store.close()


def test_a_page_or_an_id_is_found_without_reading_or_sorting_the_whole_key(store: ValueStore) -> None:
    """A key can hold 1,024 values of 64 KiB: a page must not sort them all (an ORDER BY against the
    key's order did, 46 ms a page for 30 KB values), nor a lookup by id read them all."""
    plans = []
    original = store._db

    class Recording:  # records the plan of each query the store runs, then runs it
        def execute(self, query: str, params: tuple = ()) -> sqlite3.Cursor:
            if query.lstrip().startswith("SELECT"):
                plans.append(" | ".join(row[3] for row in original.execute("EXPLAIN QUERY PLAN " + query, params)))
            return original.execute(query, params)

    for value_id in range(1, 20):
        store.put(KEY, signed(value_id) if value_id % 2 else unsigned(value_id), origin=PEER_A, ttl=TTL)
    store._db = Recording()  # type: ignore[assignment]
    try:
        assert len(store.values_from(KEY, 4, 8)) == 8 and len(store.values_from(KEY, 12, 8)) == 7
        assert len(store.values_with_id(KEY, 7)) == 1
    finally:
        store._db = original
    assert plans and all("SCAN vals" not in plan for plan in plans), plans  # no query reads the whole key
    assert any("COVERING INDEX vals_order" in plan for plan in plans) and any("INDEX vals_id" in plan for plan in plans)


def test_unsigned_values_fill_half_of_a_key_at_most(db_path: Path) -> None:
    """Anyone can make unsigned values (four stock sources filled a key before): signed values, which
    have owners, always have the other half."""
    store = open_store(db_path, Quotas(max_values_per_key=8, key_share=1.0))
    try:
        verdicts = [store.put(KEY, unsigned(i), origin=f"10.0.{i}.1", ttl=TTL) for i in range(1, 7)]
        assert verdicts == [Verdict.NEW] * 4 + [Verdict.REFUSE_KEY_FULL] * 2
        assert [store.put(KEY, signed(i), origin=PEER_A, ttl=TTL) for i in range(10, 14)] == [Verdict.NEW] * 4
    finally:
        store.close()
