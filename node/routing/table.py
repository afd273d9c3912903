"""The k-bucket routing table: proven contacts only, true k-closest queries, eviction with replacements.

Buckets split when full and covering our own id. A full bucket that cannot split keeps newcomers in a
bounded replacement cache (long-lived contacts are kept: Kademlia's own rule, which also keeps out
a flood of fresh ids); a contact is dropped after a failed call (which already includes one retry)
and its best replacement promoted. A bucket takes no more contacts from one host or subnet than its
`Diversity` allows, and the closest contacts it hands out keep within it too.
"""

import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from dhtmesh.node.routing.contact import ID_BITS, Contact
from dhtmesh.node.routing.diversity import UNLIMITED, Diversity
from dhtmesh.node.wire.netgroup import family_of

GOOD_FOR = 600.0  # a contact that answered within this many seconds is "good", as OpenDHT counts


@dataclass(slots=True)
class _Entry:
    contact: Contact
    # -inf, not 0: monotonic time starts at boot, so 0 can be "recent" on a freshly booted host.
    last_reply: float = -math.inf
    last_request: float = -math.inf


@dataclass(slots=True)
class _Bucket:
    low: int
    high: int  # exclusive
    entries: OrderedDict[bytes, _Entry] = field(default_factory=OrderedDict)  # least recently seen first
    replacements: OrderedDict[bytes, Contact] = field(default_factory=OrderedDict)
    touched: float = field(default_factory=time.monotonic)

    def covers(self, id_int: int) -> bool:
        return self.low <= id_int < self.high


class RoutingTable:
    def __init__(
        self, own_id: bytes, k: int = 20, replacement_factor: int = 5, diversity: Diversity = UNLIMITED
    ) -> None:
        self.own_id = own_id
        self.k = k
        self._diversity = diversity
        self._replacement_limit = k * replacement_factor
        self._buckets: list[_Bucket] = [_Bucket(0, 1 << ID_BITS)]
        # Every find we serve or make asks for the closest contacts: keep them flat between changes.
        self._flat: list[Contact] | None = None

    # ---- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(len(bucket.entries) for bucket in self._buckets)

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._bucket_for(node_id).entries

    def contacts(self) -> list[Contact]:
        return list(self._all())

    def _all(self) -> list[Contact]:
        if self._flat is None:
            self._flat = [entry.contact for bucket in self._buckets for entry in bucket.entries.values()]
        return self._flat

    def get(self, node_id: bytes) -> Contact | None:
        entry = self._bucket_for(node_id).entries.get(node_id)
        return entry.contact if entry else None

    def closest(self, target: bytes, count: int | None = None, exclude: Iterable[bytes] = ()) -> list[Contact]:
        """The `count` (default k) known contacts XOR-closest to `target`, nearest first, within the
        diversity caps (`target`'s own contact always included)."""
        excluded = set(exclude)
        target_int = int.from_bytes(target, "big")
        candidates = [c for c in self._all() if c.node_id not in excluded] if excluded else self._all()
        ordered = sorted(candidates, key=lambda c: c.id_int ^ target_int)
        return self._diversity.pick(ordered, self.k if count is None else count, target)

    def health(self, family: int | None = None) -> tuple[int, int]:
        """(good, dubious): contacts heard from within `GOOD_FOR`, and the rest; of one address family
        (4 or 6, `netgroup.family_of`) when given."""
        now = time.monotonic()
        entries = self._entries(family)
        good = sum(1 for e in entries if now - e.last_reply < GOOD_FOR)
        return good, len(entries) - good

    def incoming(self, family: int | None = None) -> int:
        """Contacts (of one address family, when given) that sent us a request within `GOOD_FOR`."""
        now = time.monotonic()
        return sum(1 for e in self._entries(family) if now - e.last_request < GOOD_FOR)

    def _entries(self, family: int | None) -> list[_Entry]:
        return [
            entry
            for bucket in self._buckets
            for entry in bucket.entries.values()
            if family is None or family_of(entry.contact.host) == family
        ]

    def stale_buckets(self, older_than: float) -> list[tuple[int, int]]:
        now = time.monotonic()
        return [(b.low, b.high) for b in self._buckets if now - b.touched > older_than]

    def least_recent(self, node_id: bytes) -> Contact | None:
        """The least recently seen contact of the bucket that `node_id` falls in, if that bucket is full."""
        bucket = self._bucket_for(node_id)
        if len(bucket.entries) < self.k:
            return None
        return next(iter(bucket.entries.values())).contact

    @property
    def own_id_int(self) -> int:
        return int.from_bytes(self.own_id, "big")

    # ---- updates ------------------------------------------------------------------------------

    def add(self, contact: Contact, *, replied: bool = True) -> bool:
        """Add or refresh a *proven* contact; True if it is in the table afterwards.

        Our own id never enters the table (flaw F8). A contact whose id moved to a new address
        replaces the old address only after that address proved the id again (the caller's duty).
        """
        if contact.node_id == self.own_id:
            return False
        while True:
            bucket = self._bucket_for(contact.node_id)
            entry = bucket.entries.get(contact.node_id)
            now = time.monotonic()
            bucket.touched = now
            if entry is not None:
                if entry.contact != contact:
                    if not self._admits(bucket, contact):
                        return False  # it moved to a host or subnet that has its share of this bucket
                    entry.contact, self._flat = contact, None
                bucket.entries.move_to_end(contact.node_id)
                if replied:
                    entry.last_reply = now
                return True
            if not self._admits(bucket, contact):
                return False  # its host or subnet has its share of this bucket already
            if len(bucket.entries) < self.k:
                bucket.entries[contact.node_id] = _Entry(contact, last_reply=now if replied else -math.inf)
                self._flat = None
                bucket.replacements.pop(contact.node_id, None)
                return True
            if bucket.covers(self.own_id_int) and bucket.high - bucket.low > 1:
                self._split(bucket)
                continue
            bucket.replacements[contact.node_id] = contact
            bucket.replacements.move_to_end(contact.node_id)
            while len(bucket.replacements) > self._replacement_limit:
                bucket.replacements.popitem(last=False)
            return False

    def note_request(self, contact: Contact) -> None:
        """A proven contact sent us a request: it is alive and reaches us."""
        if self.add(contact, replied=False):
            self._bucket_for(contact.node_id).entries[contact.node_id].last_request = time.monotonic()

    def remove(self, node_id: bytes) -> Contact | None:
        """Drop a contact that failed a call, promoting its most recent replacement; return that one."""
        bucket = self._bucket_for(node_id)
        bucket.replacements.pop(node_id, None)
        if bucket.entries.pop(node_id, None) is None:
            return None
        self._flat = None
        # The most recent replacement that keeps the bucket within its caps (replacements were admitted
        # against the entries of their day, and several may share a host).
        promoted = next((c for c in reversed(bucket.replacements.values()) if self._admits(bucket, c)), None)
        if promoted is None:
            return None
        del bucket.replacements[promoted.node_id]
        # A replacement was proven when it was offered, but has not replied since: mark it unheard.
        bucket.entries[promoted.node_id] = _Entry(promoted)
        return promoted

    def _admits(self, bucket: _Bucket, contact: Contact) -> bool:
        return self._diversity.admits((entry.contact for entry in bucket.entries.values()), contact)

    def _bucket_for(self, node_id: bytes) -> _Bucket:
        id_int = int.from_bytes(node_id, "big")
        for bucket in self._buckets:
            if bucket.covers(id_int):
                return bucket
        raise AssertionError("buckets cover the whole id space")

    def _split(self, bucket: _Bucket) -> None:
        middle = (bucket.low + bucket.high) // 2
        lower, upper = _Bucket(bucket.low, middle), _Bucket(middle, bucket.high)
        for node_id, entry in bucket.entries.items():
            (lower if entry.contact.id_int < middle else upper).entries[node_id] = entry
        for node_id, contact in bucket.replacements.items():
            (lower if contact.id_int < middle else upper).replacements[node_id] = contact
        index = self._buckets.index(bucket)
        self._buckets[index : index + 1] = [lower, upper]
