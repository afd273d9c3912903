"""node/routing/: the k-bucket table (true k-closest, splits, replacements, health) and wire contacts."""

import itertools
import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtmesh.node.routing import table as table_module
from dhtmesh.node.routing.contact import ID_BITS, Contact, contact_from_wire, distance
from dhtmesh.node.routing.diversity import Diversity
from dhtmesh.node.routing.table import RoutingTable

SPACE = 1 << ID_BITS
OWN_ZERO = bytes(20)


def node_id(number: int) -> bytes:
    return number.to_bytes(20, "big")


def contact(identifier: bytes | int, port: int = 4222) -> Contact:
    raw = identifier if isinstance(identifier, bytes) else node_id(identifier)
    return Contact(raw, "127.0.0.1", port)


def brute_force_closest(contacts: list[Contact], target: bytes, count: int) -> list[Contact]:
    return sorted(contacts, key=lambda c: distance(c.node_id, target))[:count]


def bucket_ranges(table: RoutingTable) -> list[tuple[int, int]]:
    """Every bucket's [low, high): all of them are 'stale' for a negative age."""
    return table.stale_buckets(older_than=-1.0)


def assert_buckets_split_only_around_own_id(table: RoutingTable) -> None:
    ranges = bucket_ranges(table)
    assert ranges[0][0] == 0 and ranges[-1][1] == SPACE
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    own = table.own_id_int
    for low, high in ranges:
        size = high - low
        assert size & (size - 1) == 0 and low % size == 0, "buckets are aligned halves of the id space"
        if size < SPACE:
            parent_low = low - low % (2 * size)
            assert parent_low <= own < parent_low + 2 * size, "only a bucket covering the own id was split"
    for low, high in ranges:
        inside = [c for c in table.contacts() if low <= c.id_int < high]
        assert len(inside) <= table.k


def fill(table: RoutingTable, ids: list[bytes]) -> list[Contact]:
    contacts = [contact(raw) for raw in ids]
    for each in contacts:
        table.add(each)
    return contacts


node_ids = st.binary(min_size=20, max_size=20)


def random_ids(seed: int, count: int, own: bytes) -> list[bytes]:
    """Uniform ids, and ids sharing ever longer prefixes with `own`, so that deep buckets exist."""
    rng = random.Random(seed)
    uniform = [rng.randbytes(20) for _ in range(count)]
    own_int = int.from_bytes(own, "big")
    near = [node_id(own_int ^ rng.getrandbits(rng.randrange(1, ID_BITS))) for _ in range(count // 2)]
    return uniform + near


# ---- closest ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    own=node_ids,
    extra=st.lists(node_ids, max_size=40),
    seed=st.integers(0, 2**32),
    count=st.integers(0, 400),
    targets=st.lists(node_ids, min_size=1, max_size=4),
    table_k=st.sampled_from([2, 5, 20]),
)
def test_closest_equals_brute_force(
    own: bytes, extra: list[bytes], seed: int, count: int, targets: list[bytes], table_k: int
) -> None:
    table = RoutingTable(own, k=table_k)
    added = fill(table, random_ids(seed, count, own) + extra + [own])
    held = list({c.node_id: c for c in added if c.node_id in table}.values())
    assert sorted(held, key=lambda c: c.node_id) == sorted(table.contacts(), key=lambda c: c.node_id)
    assert len(table) == len(held)
    assert own not in table
    for target in [*targets, own]:
        for wanted in (1, 3, table_k, 20, 1000):
            assert table.closest(target, wanted) == brute_force_closest(held, target, wanted)
        assert table.closest(target) == brute_force_closest(held, target, table_k)
    assert_buckets_split_only_around_own_id(table)


@settings(max_examples=30, deadline=None)
@given(own=node_ids, seed=st.integers(0, 2**32), target=node_ids, drop=st.integers(0, 30))
def test_closest_honours_exclude(own: bytes, seed: int, target: bytes, drop: int) -> None:
    table = RoutingTable(own)
    fill(table, random_ids(seed, 200, own))
    excluded = [c.node_id for c in table.closest(target, drop)] if drop else []
    remaining = [c for c in table.contacts() if c.node_id not in excluded]
    assert table.closest(target, 20, exclude=excluded) == brute_force_closest(remaining, target, 20)


def test_closest_of_empty_table_is_empty() -> None:
    assert RoutingTable(OWN_ZERO).closest(node_id(5)) == []


# ---- own id (flaw F8) ---------------------------------------------------------------------------------


def test_own_id_is_never_added() -> None:
    own = random.Random(1).randbytes(20)
    table = RoutingTable(own, k=4)
    assert table.add(contact(own)) is False
    table.note_request(contact(own))
    fill(table, random_ids(2, 100, own))
    assert table.add(contact(own, port=9999)) is False
    assert own not in table
    assert table.get(own) is None
    assert all(c.node_id != own for c in table.contacts())
    assert all(c.node_id != own for c in table.closest(own, 1000))


# ---- splits and replacements ----------------------------------------------------------------------


FAR = [node_id(prefix << 152) for prefix in (0x80, 0xC0, 0xA0, 0xE0, 0x90)]


def test_full_far_bucket_sends_newcomers_to_replacements() -> None:
    table = RoutingTable(OWN_ZERO, k=2)
    assert table.add(contact(FAR[0])) and table.add(contact(FAR[1]))
    assert bucket_ranges(table) == [(0, SPACE)]
    assert table.add(contact(FAR[2])) is False
    assert bucket_ranges(table) == [(0, SPACE // 2), (SPACE // 2, SPACE)]
    assert FAR[2] not in table
    assert table.least_recent(FAR[3]) == contact(FAR[0])
    assert table.add(contact(FAR[3])) is False
    assert len(table) == 2
    assert bucket_ranges(table) == [(0, SPACE // 2), (SPACE // 2, SPACE)], "a far bucket never splits"


def test_bucket_covering_own_id_keeps_splitting() -> None:
    table = RoutingTable(OWN_ZERO, k=2)
    fill(table, FAR)
    near = [node_id(n) for n in range(1, 40)]
    assert all(table.add(contact(raw)) for raw in near[:3])
    fill(table, near[3:])
    assert all(raw in table for raw in near[:2])
    assert table.closest(OWN_ZERO, 2) == [contact(near[0]), contact(near[1])]
    assert len(bucket_ranges(table)) > 100
    assert_buckets_split_only_around_own_id(table)


def test_refreshing_a_known_contact_updates_address_and_order() -> None:
    table = RoutingTable(OWN_ZERO, k=2)
    fill(table, FAR[:2])
    table.add(contact(FAR[2]))
    assert table.least_recent(FAR[2]) == contact(FAR[0])
    moved = Contact(FAR[0], "10.0.0.9", 5000)
    assert table.add(moved) is True
    assert table.get(FAR[0]) == moved
    assert table.least_recent(FAR[2]) == contact(FAR[1])


def test_remove_promotes_the_most_recent_replacement() -> None:
    table = RoutingTable(OWN_ZERO, k=2)
    fill(table, FAR[:4])  # FAR[2], FAR[3] are replacements
    assert table.remove(FAR[0]) == contact(FAR[3])
    assert FAR[0] not in table and FAR[3] in table
    assert table.remove(FAR[1]) == contact(FAR[2])
    assert FAR[2] in table
    assert table.remove(FAR[3]) is None
    assert sorted(c.node_id for c in table.contacts()) == [FAR[2]]
    assert table.remove(FAR[4]) is None
    assert table.remove(node_id(12345)) is None


def test_removing_a_replacement_forgets_it() -> None:
    table = RoutingTable(OWN_ZERO, k=2)
    fill(table, FAR[:4])
    assert table.remove(FAR[3]) is None
    assert table.remove(FAR[0]) == contact(FAR[2])
    assert table.remove(FAR[1]) is None


def test_replacement_cache_is_bounded_and_keeps_the_newest() -> None:
    table = RoutingTable(OWN_ZERO, k=2, replacement_factor=1)
    fill(table, FAR)  # FAR[2..4] offered; only the newest two are kept
    assert table.remove(FAR[0]) == contact(FAR[4])
    assert table.remove(FAR[1]) == contact(FAR[3])
    assert table.remove(FAR[4]) is None


def test_promoted_replacement_counts_as_unheard() -> None:
    table = RoutingTable(OWN_ZERO, k=2)
    fill(table, FAR[:3])
    table.remove(FAR[0])
    assert table.health() == (1, 1)
    table.add(contact(FAR[2]))
    assert table.health() == (2, 0)


# ---- health -----------------------------------------------------------------------------------------


def test_health_counts_good_and_dubious() -> None:
    table = RoutingTable(OWN_ZERO)
    replied = [contact(n) for n in range(1, 6)]
    requested = [contact(n) for n in range(100, 103)]
    for each in replied:
        table.add(each)
    for each in requested:
        table.note_request(each)
    assert len(table) == 8
    assert table.health() == (5, 3)
    assert table.incoming() == 3
    table.add(requested[0])
    assert table.health() == (6, 2)
    table.note_request(replied[0])
    assert table.incoming() == 4
    assert table.health() == (6, 2)


def test_health_counts_old_replies_as_dubious(monkeypatch: pytest.MonkeyPatch) -> None:
    table = RoutingTable(OWN_ZERO)
    table.add(contact(1))
    later = time.monotonic() + table_module.GOOD_FOR + 1
    monkeypatch.setattr(table_module.time, "monotonic", lambda: later)
    table.add(contact(2))
    assert table.health() == (1, 1)


def test_never_heard_contact_is_dubious_soon_after_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """time.monotonic() counts from boot: on a host up for less than GOOD_FOR seconds (a fresh CI VM), an
    entry whose `last_reply` is the 0.0 'never' sentinel looks as if it replied recently."""
    monkeypatch.setattr(table_module.time, "monotonic", lambda: 100.0)
    table = RoutingTable(OWN_ZERO)
    table.add(contact(1))
    table.note_request(contact(2))
    assert table.health() == (1, 1)


# ---- wire contacts ----------------------------------------------------------------------------------


def test_contact_wire_round_trip() -> None:
    original = Contact(node_id(42), "192.0.2.1", 65535)
    assert contact_from_wire(original.to_wire()) == original
    assert original.address == ("192.0.2.1", 65535)


@pytest.mark.parametrize(
    "item",
    [
        None,
        "triple",
        (node_id(1), "h", 1),
        [],
        [node_id(1), "h"],
        [node_id(1), "h", 1, 2],
        [node_id(1)[:19], "h", 1],
        [node_id(1) + b"\x00", "h", 1],
        ["x" * 20, "h", 1],
        [1, "h", 1],
        [node_id(1), b"h", 1],
        [node_id(1), "", 1],
        [node_id(1), "h" * 65, 1],
        [node_id(1), None, 1],
        [node_id(1), "h", 0],
        [node_id(1), "h", -1],
        [node_id(1), "h", 65536],
        [node_id(1), "h", "4222"],
        [node_id(1), "h", 4222.0],
        [node_id(1), "h", None],
        [node_id(1), "h", True],
    ],
    ids=lambda item: repr(item).replace(repr(node_id(1)), "ID"),
)
def test_contact_from_wire_rejects_malformed(item: Any) -> None:
    assert contact_from_wire(item) is None


wire_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=25)
)
wire_objects = st.recursive(wire_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=10)
triples = st.lists(node_ids | wire_scalars, min_size=3, max_size=3)


@settings(max_examples=300, deadline=None)
@given(item=wire_objects | triples | st.tuples(node_ids, st.text(max_size=70), st.integers()).map(list))
def test_contact_from_wire_never_raises(item: Any) -> None:
    parsed = contact_from_wire(item)
    if parsed is not None:
        assert isinstance(parsed.node_id, bytes) and len(parsed.node_id) == 20
        assert isinstance(parsed.host, str) and 0 < len(parsed.host) <= 64
        assert isinstance(parsed.port, int) and 0 < parsed.port < 65536
        assert parsed.to_wire() == item


# ---- diversity: contacts per host and per subnet ------------------------------------------------------


def test_a_bucket_takes_at_most_its_share_of_one_host_and_one_subnet() -> None:
    diversity = Diversity(per_host=2, per_subnet=3)
    table = RoutingTable(OWN_ZERO, k=20, diversity=diversity)
    same_host = [Contact(node_id(prefix << 152), "10.0.0.1", 4000 + prefix) for prefix in range(0x80, 0x90)]
    assert [table.add(c) for c in same_host] == [True, True] + [False] * 14
    same_subnet = [Contact(node_id((0x90 + n) << 152), f"10.0.0.{n + 2}", 4000) for n in range(4)]
    assert [table.add(c) for c in same_subnet] == [True, False, False, False]  # 3 in 10.0.0.0/24 now
    elsewhere = [Contact(node_id((0xA0 + n) << 152), f"10.{n + 1}.0.1", 4000) for n in range(10)]
    assert all(table.add(c) for c in elsewhere)
    assert table.add(same_host[0]) is True  # a contact already in keeps its place
    v6 = [Contact(node_id((0xC0 + n) << 152), f"2001:db8::{n + 1}", 4000) for n in range(3)]
    assert [table.add(c) for c in v6] == [True, True, False]  # one IPv6 /64 is one host


def test_picking_the_closest_keeps_within_the_caps_but_always_takes_the_target() -> None:
    crowd = [Contact(node_id(n), "10.0.0.1", 4000 + n) for n in range(1, 30)]  # one host, nearest
    subnet = [Contact(node_id(100 + n), f"10.0.1.{n + 1}", 4000) for n in range(15)]  # one /24, next
    others = [Contact(node_id(1000 + n), f"10.{n + 2}.0.1", 4000) for n in range(30)]
    ordered = [*crowd, *subnet, *others]
    picked = Diversity().pick(ordered, 20)
    assert [c.host for c in picked[:2]] == ["10.0.0.1"] * 2
    assert sum(c.host.startswith("10.0.1.") for c in picked) == Diversity().per_subnet
    assert len(picked) == 20 and picked[12:] == others[:8]
    target = crowd[7]
    assert target in Diversity().pick(ordered, 20, target=target.node_id)  # findable by its own id


def test_replacements_promoted_and_addresses_moved_keep_a_bucket_within_its_caps() -> None:
    table = RoutingTable(node_id(1 << 159), k=3, diversity=Diversity(per_host=1, per_subnet=10))
    far = [Contact(node_id(n << 150), f"10.{n}.0.1", 4000) for n in range(1, 4)]  # fills a far bucket
    assert all(table.add(c) for c in far)
    crowd = [Contact(node_id((n + 8) << 150), "10.99.0.1", 4000 + n) for n in range(3)]  # one host
    assert not any(table.add(c) for c in crowd)  # the bucket is full: cached as replacements
    table.remove(far[0].node_id)
    table.remove(far[1].node_id)
    hosts = [c.host for c in table.contacts()]
    assert hosts.count("10.99.0.1") == 1  # one promoted; the next would break the cap, so it is not
    moved = Contact(far[2].node_id, "10.99.0.1", 5000)
    assert table.add(moved) is False and table.get(far[2].node_id) == far[2]  # nor may a contact move in
