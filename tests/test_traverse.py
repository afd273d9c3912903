"""node/lookups/traverse.py: the alpha-in-flight lookup against simulated networks, and its round-based reference."""

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from dhtmesh.node.lookups.traverse import LookupStats, Query, traverse, traverse_in_rounds
from dhtmesh.node.routing.contact import Contact, distance

Lookup = Callable[..., Awaitable[list[Contact]]]
K = 20


@dataclass
class Network:
    """Simulated nodes: who each one knows, which ones fail, and how slowly each one answers."""

    contacts: dict[bytes, Contact]
    knows: dict[bytes, list[Contact]]
    failing: set[bytes] = field(default_factory=set)
    delays: dict[bytes, float] = field(default_factory=dict)

    def closest_known(self, node: bytes, target: bytes, count: int) -> list[Contact]:
        return sorted(self.knows[node], key=lambda c: distance(c.node_id, target))[:count]

    def reachable_from(self, seeds: list[Contact]) -> set[bytes]:
        """Every id a lookup could ever hear of: seeds, and whatever non-failing nodes it reaches know."""
        seen = {c.node_id for c in seeds}
        frontier = [c.node_id for c in seeds]
        while frontier:
            node = frontier.pop()
            if node in self.failing:
                continue
            for known in self.knows[node]:
                if known.node_id not in seen:
                    seen.add(known.node_id)
                    frontier.append(known.node_id)
        return seen

    def true_closest(self, target: bytes, seeds: list[Contact], count: int, exclude: bytes | None = None) -> list:
        alive = [
            self.contacts[node]
            for node in self.reachable_from(seeds)
            if node not in self.failing and node != exclude
        ]
        return sorted(alive, key=lambda c: distance(c.node_id, target))[:count]


def build_network(
    seed: int, size: int = 300, random_known: int = 10, nearest_known: int = 8, failing: float = 0.0
) -> Network:
    rng = random.Random(seed)
    contacts = {raw: Contact(raw, "10.0.0.1", 1000 + i) for i, raw in enumerate(rng.randbytes(20) for _ in range(size))}
    ids = list(contacts)
    knows = {}
    for node in ids:
        nearest = sorted((other for other in ids if other != node), key=lambda other: distance(node, other))
        chosen = set(nearest[:nearest_known]) | set(rng.sample(ids, random_known)) - {node}
        knows[node] = [contacts[other] for other in chosen]
    dead = set(rng.sample(ids, int(size * failing)))
    return Network(contacts, knows, dead)


@dataclass
class Tracker:
    """Records every query: who was asked, in what order, and how many were in flight at once."""

    asked: list[bytes] = field(default_factory=list)
    finished: list[bytes] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    started_while: dict[bytes, list[bytes]] = field(default_factory=dict)

    def start(self, node: bytes) -> None:
        for pending in self.started_while.values():
            pending.append(node)
        self.started_while[node] = []
        self.asked.append(node)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def finish(self, node: bytes) -> list[bytes]:
        self.in_flight -= 1
        self.finished.append(node)
        return self.started_while.pop(node)


def make_query(
    network: Network,
    target: bytes,
    tracker: Tracker,
    *,
    jitter: float = 0.0,
    rng: random.Random | None = None,
    overlap: dict[bytes, list[bytes]] | None = None,
) -> Query:
    """The injected query: a node answers its K closest known contacts, after its delay; failing nodes give None."""
    rng = rng or random.Random(0)

    async def query(contact: Contact) -> list[Contact] | None:
        node = contact.node_id
        tracker.start(node)
        try:
            delay = network.delays.get(node, rng.uniform(0, jitter) if jitter else 0.0)
            await asyncio.sleep(delay)
            if node in network.failing:
                return None
            return network.closest_known(node, target, K)
        finally:
            started_meanwhile = tracker.finish(node)
            if overlap is not None:
                overlap[node] = started_meanwhile

    return query


def pick_seeds(network: Network, rng: random.Random, count: int = 4) -> list[Contact]:
    alive = [network.contacts[node] for node in network.contacts if node not in network.failing]
    return rng.sample(alive, count)


def ids(contacts: list[Contact]) -> list[bytes]:
    return [c.node_id for c in contacts]


# ---- correctness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("network_seed", [1, 2, 3])
async def test_traverse_finds_true_k_closest(network_seed: int) -> None:
    network = build_network(network_seed)
    rng = random.Random(network_seed)
    for _ in range(5):
        target, seeds = rng.randbytes(20), pick_seeds(network, rng)
        tracker = Tracker()
        found = await traverse(target, seeds, make_query(network, target, tracker), k=K)
        assert found == network.true_closest(target, seeds, K)
        assert tracker.in_flight == 0
        assert len(set(tracker.asked)) == len(tracker.asked), "nobody is asked twice"


@pytest.mark.parametrize("network_seed", [4, 5])
async def test_traverse_with_failures_and_jitter_finds_true_k_closest_alive(network_seed: int) -> None:
    network = build_network(network_seed, failing=0.15)
    rng = random.Random(network_seed)
    for _ in range(5):
        target, seeds = rng.randbytes(20), pick_seeds(network, rng)
        tracker = Tracker()
        query = make_query(network, target, tracker, jitter=0.002, rng=rng)
        found = await traverse(target, seeds, query, k=K)
        assert found == network.true_closest(target, seeds, K)
        assert not set(ids(found)) & network.failing
        assert set(ids(found)) <= set(tracker.finished)


@pytest.mark.parametrize("network_seed", [6, 7])
async def test_traverse_equals_rounds_reference(network_seed: int) -> None:
    network = build_network(network_seed, failing=0.1)
    rng = random.Random(network_seed)
    for _ in range(6):
        target, seeds = rng.randbytes(20), pick_seeds(network, rng)
        for alpha in (1, 3, 8):
            fast = await traverse(target, seeds, make_query(network, target, Tracker(), jitter=0.001, rng=rng),
                                  k=K, alpha=alpha)
            reference = await traverse_in_rounds(target, seeds, make_query(network, target, Tracker()),
                                                 k=K, alpha=alpha)
            assert fast == reference


@pytest.mark.parametrize("k", [1, 5])
async def test_small_k(k: int) -> None:
    network = build_network(8)
    rng = random.Random(8)
    target, seeds = rng.randbytes(20), pick_seeds(network, rng)
    found = await traverse(target, seeds, make_query(network, target, Tracker()), k=k)
    assert found == network.true_closest(target, seeds, k)


async def test_excluded_id_is_never_asked_nor_returned() -> None:
    network = build_network(9)
    rng = random.Random(9)
    own = rng.choice(list(network.contacts))
    target = own[:-1] + bytes([own[-1] ^ 1])  # the excluded node is the closest of all to the target
    seeds = [*pick_seeds(network, rng), network.contacts[own]]
    tracker = Tracker()
    found = await traverse(target, seeds, make_query(network, target, tracker), k=K, exclude=own)
    assert own not in ids(found)
    assert own not in tracker.asked
    assert found == network.true_closest(target, seeds, K, exclude=own)
    reference = await traverse_in_rounds(target, seeds, make_query(network, target, Tracker()), k=K, exclude=own)
    assert found == reference


async def test_all_seeds_failing_gives_nothing() -> None:
    network = build_network(10)
    seeds = list(network.contacts.values())[:5]
    network.failing.update(ids(seeds))
    found = await traverse(b"\x00" * 20, seeds, make_query(network, b"\x00" * 20, Tracker()))
    assert found == []


async def test_no_seeds_gives_nothing() -> None:
    async def never_called(contact: Contact) -> list[Contact] | None:
        raise AssertionError("no one to ask")

    assert await traverse(bytes(20), [], never_called) == []


async def test_a_raising_query_counts_as_a_failure() -> None:
    network = build_network(11)
    rng = random.Random(11)
    target, seeds = rng.randbytes(20), pick_seeds(network, rng)
    broken = set(ids(network.true_closest(target, seeds, 3)))
    inner = make_query(network, target, Tracker())

    async def query(contact: Contact) -> list[Contact] | None:
        if contact.node_id in broken:
            raise ConnectionResetError("peer vanished")
        return await inner(contact)

    found = await traverse(target, seeds, query, k=K)
    network.failing.update(broken)
    assert found == network.true_closest(target, seeds, K)


# ---- alpha in flight ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1, 3, 6])
async def test_exactly_alpha_queries_in_flight(alpha: int) -> None:
    network = build_network(12, failing=0.1)
    rng = random.Random(12)
    target, seeds = rng.randbytes(20), pick_seeds(network, rng, count=8)
    tracker = Tracker()
    await traverse(target, seeds, make_query(network, target, tracker, jitter=0.003, rng=rng), k=K, alpha=alpha)
    assert tracker.max_in_flight == alpha
    assert len(tracker.asked) > 2 * alpha


async def test_one_slow_node_does_not_hold_up_the_others() -> None:
    """While a slow node is being asked, the lookup goes on asking others (the rounds reference waits)."""
    network = build_network(13)
    rng = random.Random(13)
    target, seeds = rng.randbytes(20), pick_seeds(network, rng, count=6)
    slow = min(seeds, key=lambda c: distance(c.node_id, target)).node_id  # asked in the very first batch
    network.delays[slow] = 0.3

    overlap: dict[bytes, list[bytes]] = {}
    tracker = Tracker()
    loop = asyncio.get_running_loop()
    began = loop.time()
    found = await traverse(target, seeds, make_query(network, target, tracker, overlap=overlap), k=K, alpha=3)
    elapsed = loop.time() - began
    assert found == network.true_closest(target, seeds, K)
    assert tracker.asked[0] == slow
    assert len(overlap[slow]) > 3 * 3, "many queries started while the slow one was pending"
    assert tracker.finished.index(slow) > 10
    assert elapsed < 0.3 + 0.2

    rounds_overlap: dict[bytes, list[bytes]] = {}
    rounds_tracker = Tracker()
    await traverse_in_rounds(
        target, seeds, make_query(network, target, rounds_tracker, overlap=rounds_overlap), k=K, alpha=3
    )
    assert len(rounds_overlap[slow]) == 2, "the reference only runs the rest of its round meanwhile"


async def test_a_finished_query_is_replaced_at_once() -> None:
    """With one fast and two slow nodes in flight, the fast one's successor starts before the slow ones end."""
    network = build_network(14)
    rng = random.Random(14)
    target, seeds = rng.randbytes(20), pick_seeds(network, rng, count=3)
    ordered = sorted(seeds, key=lambda c: distance(c.node_id, target))
    for contact in ordered[1:]:
        network.delays[contact.node_id] = 0.2
    overlap: dict[bytes, list[bytes]] = {}
    tracker = Tracker()
    await traverse(target, seeds, make_query(network, target, tracker, overlap=overlap), k=K, alpha=3)
    assert tracker.asked[:3] == ids(ordered)
    for contact in ordered[1:]:
        assert len(overlap[contact.node_id]) >= 5
    assert tracker.max_in_flight == 3


async def test_cancelling_the_lookup_cancels_its_queries() -> None:
    cancelled: list[bytes] = []
    started = asyncio.Event()

    async def hanging(contact: Contact) -> list[Contact] | None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(contact.node_id)
            raise
        return []

    seeds = [Contact(bytes([n]) * 20, "10.0.0.1", 1000 + n) for n in range(5)]
    lookup = asyncio.ensure_future(traverse(bytes(20), seeds, hanging, alpha=3))
    await started.wait()
    await asyncio.sleep(0.01)
    lookup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lookup
    assert sorted(cancelled) == sorted(ids(seeds[:3]))


async def test_stats_count_the_longest_chain_of_contacts_learnt_and_then_asked() -> None:
    # The seed knows a, a knows b: b was learnt two replies deep, so the lookup went 3 hops.
    seed, a, b = (Contact(bytes([index]) * 20, "10.0.0.1", 1000 + index) for index in range(3))
    knows = {seed.node_id: [a], a.node_id: [b], b.node_id: []}

    async def query(contact: Contact) -> list[Contact]:
        return knows[contact.node_id]

    stats = LookupStats()
    found = await traverse(bytes(20), [seed], query, stats=stats)
    assert {c.node_id for c in found} == set(knows)
    assert (stats.hops, stats.asked, stats.answered) == (3, 3, 3)
