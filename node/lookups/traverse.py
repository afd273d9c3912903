"""The Kademlia node lookup as a pure async function over an injected `query`.

`traverse` keeps `alpha` queries in flight at all times: as soon as one answers, the next closest
unqueried candidate is asked, with no waiting for a whole round (the stock crawler's synchronisation,
which hivemind measured as the reason extra alpha did not help). It ends when the k closest
candidates that have not failed have all answered, or earlier when the caller is `satisfied` (a get
that heard from enough replicas). `traverse_in_rounds` is the plain textbook version, kept as the
reference the tests compare against.

A `Diversity` caps how many of the candidates a lookup considers nearest (and of its result) may share
a host or a subnet: ids are free to make, so without it one host could fill a key's k closest. And a
peer's word is limited (`per_referrer`): of the candidates nobody has heard from yet, at most that many
introduced by one peer are considered at a time, and a peer whose introductions failed that many times
is no longer believed (its other introductions are passed over unless someone else vouches for them).
Without it one peer answering every find with ids closer than anyone's, at addresses that never
answer, made every lookup of a key wait them all out, three at a time (8.8 s instead of 2 ms).
"""

import asyncio
import bisect
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.routing.diversity import UNLIMITED, Diversity

Query = Callable[[Contact], Awaitable[list[Contact] | None]]
"""Ask one contact for the contacts it knows closest to the target; None when it failed."""


@dataclass
class LookupStats:
    """What a lookup did, filled in by `traverse` when given one: contacts asked and answered, and `hops`,
    the longest chain of contacts learnt from a reply and then asked (a seed is at depth 1)."""

    asked: int = 0
    answered: int = 0
    hops: int = 0
    _depth: dict[bytes, int] = field(default_factory=dict)

    def ask(self, contact: Contact) -> None:
        self.asked += 1
        self.hops = max(self.hops, self._depth.get(contact.node_id, 1))

    def learn(self, referrer: Contact, found: list[Contact]) -> None:
        self.answered += 1
        level = self._depth.get(referrer.node_id, 1) + 1
        for contact in found:
            self._depth[contact.node_id] = min(self._depth.get(contact.node_id, level), level)


class _Candidates:
    def __init__(self, target: bytes, exclude: bytes | None, diversity: Diversity, per_referrer: int) -> None:
        self._target_id = target
        self._target = int.from_bytes(target, "big")
        self._exclude = exclude
        self._diversity = diversity
        self._per_referrer = per_referrer
        self.known: dict[bytes, Contact] = {}
        # `known`, nearest first, kept in order as contacts are offered: every answer of a lookup asks
        # for the nearest candidates again, and sorting them all each time was a sizeable part of its CPU.
        self._nearest_first: list[Contact] = []
        self.asked: set[bytes] = set()
        self.answered: set[bytes] = set()
        self.failed: set[bytes] = set()
        self._introducers: dict[bytes, set[bytes]] = {}  # candidate -> who offered it (none: a seed)
        self._failures: Counter[bytes] = Counter()  # referrer -> its introductions that failed

    def offer(self, contacts: Iterable[Contact], referrer: bytes | None = None) -> None:
        for contact in contacts:
            if contact.node_id == self._exclude:
                continue
            if contact.node_id not in self.known:
                self.known[contact.node_id] = contact
                self._introducers[contact.node_id] = set()
                bisect.insort(self._nearest_first, contact, key=self._distance)
            if referrer is not None:
                self._introducers[contact.node_id].add(referrer)

    def fail(self, node_id: bytes) -> None:
        self.failed.add(node_id)
        for referrer in self._introducers.get(node_id, ()):
            self._failures[referrer] += 1

    def _distance(self, contact: Contact) -> int:
        return contact.id_int ^ self._target

    def _believed(self, alive: list[Contact]) -> Iterable[Contact]:
        """`alive` (nearest first) but for candidates only distrusted peers vouch for, and with at most
        `per_referrer` unheard candidates on one peer's word at a time."""
        unheard: dict[bytes, int] = {}
        for contact in alive:
            introducers = self._introducers.get(contact.node_id)
            if not introducers or contact.node_id in self.answered:
                yield contact
                continue
            # The believed introducer with the fewest candidates out so far, if it has one to spare.
            referrer, fewest = None, self._per_referrer
            for introducer in introducers:
                out = unheard.get(introducer, 0)
                if out < fewest and self._failures.get(introducer, 0) < self._per_referrer:
                    referrer, fewest = introducer, out
            if referrer is None:
                continue
            unheard[referrer] = fewest + 1
            yield contact

    def nearest_alive(self, k: int) -> list[Contact]:
        alive = [c for c in self._nearest_first if c.node_id not in self.failed]
        return self._diversity.pick(self._believed(alive), k, self._target_id)

    def next_to_ask(self, k: int) -> list[Contact]:
        return [c for c in self.nearest_alive(k) if c.node_id not in self.asked]

    def result(self, k: int) -> list[Contact]:
        answered = (c for c in self._nearest_first if c.node_id in self.answered)
        return self._diversity.pick(answered, k, self._target_id)


async def traverse(
    target: bytes,
    seeds: Iterable[Contact],
    query: Query,
    *,
    k: int = 20,
    alpha: int = 3,
    exclude: bytes | None = None,
    satisfied: Callable[[], bool] = lambda: False,
    diversity: Diversity = UNLIMITED,
    per_referrer: int = 1 << 30,
    stats: LookupStats | None = None,
) -> list[Contact]:
    """The k contacts closest to `target` that answered, nearest first (within `diversity`, taking at
    most `per_referrer` unheard candidates on one peer's word); or, as soon as `satisfied()` holds after
    an answer, those that answered so far. `stats`, when given, is told what the lookup did."""
    candidates = _Candidates(target, exclude, diversity, per_referrer)
    candidates.offer(seeds)
    in_flight: dict[asyncio.Task, Contact] = {}
    try:
        while True:
            for contact in candidates.next_to_ask(k)[: alpha - len(in_flight)]:
                candidates.asked.add(contact.node_id)
                if stats is not None:
                    stats.ask(contact)
                in_flight[asyncio.ensure_future(query(contact))] = contact
            if not in_flight:
                return candidates.result(k)
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                contact = in_flight.pop(task)
                found = None if task.cancelled() or task.exception() else task.result()
                if found is None:
                    candidates.fail(contact.node_id)
                else:
                    candidates.answered.add(contact.node_id)
                    candidates.offer(found, contact.node_id)
                    if stats is not None:
                        stats.learn(contact, found)
            if satisfied():
                return candidates.result(k)
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)


async def traverse_in_rounds(
    target: bytes,
    seeds: Iterable[Contact],
    query: Query,
    *,
    k: int = 20,
    alpha: int = 3,
    exclude: bytes | None = None,
    satisfied: Callable[[], bool] = lambda: False,
    diversity: Diversity = UNLIMITED,
) -> list[Contact]:
    """Reference: ask alpha contacts per round, wait for the round, stop when the k nearest all answered
    (or `satisfied()` holds after a round)."""
    candidates = _Candidates(target, exclude, diversity, 1 << 30)
    candidates.offer(seeds)
    while not satisfied() and (batch := candidates.next_to_ask(k)[:alpha]):
        candidates.asked.update(c.node_id for c in batch)
        for contact, found in zip(batch, await asyncio.gather(*(query(c) for c in batch)), strict=True):
            if found is None:
                candidates.fail(contact.node_id)
            else:
                candidates.answered.add(contact.node_id)
                candidates.offer(found, contact.node_id)
    return candidates.result(k)
