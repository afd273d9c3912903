"""What a lookup gathers besides contacts: a key's values, merged, paged and fetched by reference; and
what a put's lookup carries to store along.

A replica answers a `dm_find` with a page of values: small ones inline, big ones as references
`(owner, id, seq)` fetched (`dm_fetch`) from the replica that offered them unless a newer or equal
version is already here, and the offset of the next page, followed until the key is read whole.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.rpcs.find import FetchRequest, FindReply, FindRequest, Ref, call_fetch, call_find
from dhtmesh.node.rpcs.storing import Carried
from dhtmesh.node.values.value import InvalidValue, Value
from dhtmesh.node.wire.endpoint import Endpoint, RpcFailure

# A put of a value up to this size rides on the lookup's find requests (one datagram each), so the k
# closest hold it when the lookup ends, with no second round of stores. Bigger values are sent only to
# the k closest, once known: a few extra replicas on nodes the lookup passed through cost too much.
STORE_ALONG_MAX = 768


@dataclass(frozen=True, slots=True)
class Wanted:
    """Which values of a key a read wants: all, only one id, only one type. Replicas are asked to send
    only those, so values of other types (or other ids) can neither slow a read nor crowd it out."""

    value_id: int | None = None
    value_type: int | None = None

    def __contains__(self, value: Value) -> bool:
        return (self.value_id is None or value.id == self.value_id) and (
            self.value_type is None or value.type == self.value_type
        )

    def request(self, key: bytes, offset: int = 0) -> FindRequest:
        """The find that asks a replica for these values of `key` (a page from `offset`)."""
        return FindRequest(key, offset, True, self.value_id, self.value_type)


ALL_VALUES = Wanted()


@dataclass(frozen=True, slots=True)
class StoreAlong:
    """A value a put's lookup asks every node it queries to store, and which of them accepted it."""

    carried: Carried
    accepted: set[bytes]
    # Contacts that answered without a verdict on the value: unproven ones are never sent it along (a
    # reflector could fill a find reply with a victim's address), older nodes ignore it. They get a
    # plain store if they end up among the k closest.
    unanswered: set[bytes]

    def note(self, contact: Contact, reply: FindReply) -> None:
        if reply.stored is True:
            self.accepted.add(contact.node_id)
        elif reply.stored is None:
            self.unanswered.add(contact.node_id)


class ValueCollector:
    """Merges the values a lookup gathers: one per (owner, id), the highest seq wins.

    A replica counts as a holder only once its values are in hand. Which replicas returned each value
    is kept too (`held_by`; this node's own copy as the empty id): a reader choosing between values
    that contradict each other can side with most replicas rather than with a few hostile ones.
    """

    def __init__(
        self,
        key: bytes,
        initial: list[Value],
        check: Callable[[bytes, Value], None],
        on_new: Callable[[Value], None] | None = None,
        wanted: Wanted = ALL_VALUES,
    ) -> None:
        self.key = key
        self._check = check  # the node's rules (`ValueRules.check`)
        self.wanted = wanted
        self.values: dict[tuple[bytes, int], Value] = {v.identity: v for v in initial if v in wanted}
        self.held_by: dict[tuple[bytes, int], set[bytes]] = {identity: {b""} for identity in self.values}
        self._on_new = on_new
        self.holders = 1 if self.values else 0  # replicas that returned values, this node included

    def offer(self, value: Value) -> None:
        current = self.values.get(value.identity)
        if value not in self.wanted or (current is not None and value.seq <= current.seq):
            return  # not taken, so not worth a signature check (replicas mostly agree)
        try:
            self._check(self.key, value)
        except InvalidValue:
            return
        self.values[value.identity] = value
        if self._on_new is not None:
            self._on_new(value)

    def wants(self, ref: Ref) -> tuple[bytes, int] | None:
        """The identity to fetch for a reference, unless we hold that version (or want another id)."""
        owner, value_id, seq = ref
        if self.wanted.value_id is not None and value_id != self.wanted.value_id:
            return None
        known = self.values.get((owner, value_id))
        return None if known is not None and known.seq >= seq else (owner, value_id)

    def note_holder(self, holder: bytes, offered: list[tuple[bytes, int]]) -> None:
        """`holder` (a replica's node id) offered these values: those taken count it as a holder."""
        for identity in offered:
            if identity in self.values:
                self.held_by.setdefault(identity, set()).add(holder)

    def result(self) -> list[Value]:
        return sorted(self.values.values(), key=lambda v: (v.owner, v.id))

    def counted(self) -> list[tuple[Value, int]]:
        """`result`, each value with how many replicas returned it."""
        return [(value, len(self.held_by.get(value.identity, ()))) for value in self.result()]


async def collect_pages(
    endpoint: Endpoint, contact: Contact, reply: FindReply, collector: ValueCollector, max_pages: int
) -> None:
    """Take the values of a replica's find reply, fetching what it offers by reference, and follow its
    pages (at most `max_pages`: enough for every value a key can hold)."""
    key = collector.key
    for _ in range(max_pages):
        for value in reply.vals or []:
            collector.offer(value)
        wanted = [identity for identity in map(collector.wants, reply.refs or []) if identity is not None]
        await asyncio.gather(*(_fetch(endpoint, contact, key, identity, collector) for identity in wanted))
        offered = [value.identity for value in reply.vals or []] + [(ref[0], ref[1]) for ref in reply.refs or []]
        collector.note_holder(contact.node_id, offered)
        if reply.more is None:
            return
        try:
            raw = await call_find(endpoint, contact.address, collector.wanted.request(key, reply.more))
            reply = FindReply.from_wire(raw.payload)
        except RpcFailure:
            return


async def _fetch(
    endpoint: Endpoint, contact: Contact, key: bytes, identity: tuple[bytes, int], collector: ValueCollector
) -> None:
    value = await call_fetch(endpoint, contact.address, FetchRequest(key, *identity))
    if value is not None:
        collector.offer(value)
