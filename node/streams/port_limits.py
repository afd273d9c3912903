"""How much of a farmer's chunk port one client may use: connections held at once and chunk bodies
in memory at once (puts being read, gets being sent), per client address and in total; and how often
proofs may be asked, per address, per auditor and in all.

Limits count per host (`netgroup.host_of`): an IPv4 address, or an IPv6 /64, since one host is
handed a whole /64 and a limit per IPv6 address would be no limit. Every limit refuses at once
rather than queueing, so that a flood costs this node a few bytes per connection and honest peers
pass over to another holder (for an auditor, a refused challenge is a miss, not a failure).
"""

import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from dhtmesh.node.wire.ratelimit import TokenBucket

# Connections held at once. An honest node holds at most 8 per holder per chunk client (`ChunkClient`),
# two clients per node (its proxy's and its auditor's): 64 leaves room for a few nodes behind one
# address. The total is also kept to a quarter of the process's descriptors (`connection_cap`).
MAX_CONNECTIONS_PER_ADDRESS = 64
MAX_CONNECTIONS = 512
# Chunk bodies in memory at once, 4 MiB each: 128 MiB at most, whoever sends them.
MAX_TRANSFERS_PER_ADDRESS = 16
MAX_TRANSFERS = 32
# Proofs (rate per second, burst). An auditor challenges a holder once per audit period (at least
# 1 s) for the one chunk it audits; a proof costs a tree build (~10 ms of hashing) unless kept.
PROVES_PER_AUDITOR = (2.0, 5.0)
PROVES_PER_ADDRESS = (10.0, 20.0)
PROVES_IN_ALL = (20.0, 40.0)
MAX_TRACKED = 4096  # buckets kept, most recently used first: many keys cannot grow memory


def connection_cap(descriptors: int) -> int:
    """The total connection cap for a process allowed `descriptors` open files: at most a quarter of
    them, leaving the rest to the proxy's clients, the node's sockets, SQLite and outgoing streams."""
    return max(1, min(MAX_CONNECTIONS, descriptors // 4))


class Full(Exception):
    """No slot left for this address (`scope` "address") or for anyone (`scope` "total")."""

    def __init__(self, what: str, scope: str) -> None:
        super().__init__(f"too many {what} from your address" if scope == "address" else f"too many {what} at once")
        self.what = what
        self.scope = scope


class Slots:
    """Things held at once (`what`: "connections", "transfers"), per address group and in total."""

    def __init__(self, what: str, total: int, per_address: int) -> None:
        self.what = what
        self.total = total
        self.per_address = per_address
        self._held: Counter[str] = Counter()
        self.in_use = 0

    @contextmanager
    def held(self, group: str) -> Iterator[None]:
        """One slot for `group` while the block runs; raises `Full` at once if none is left."""
        if self._held[group] >= self.per_address:
            raise Full(self.what, "address")
        if self.in_use >= self.total:
            raise Full(self.what, "total")
        self._held[group] += 1
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._held[group] -= 1
            if not self._held[group]:
                del self._held[group]


class Buckets:
    """A token bucket per key (an address group, an auditor id), for the most recently used keys."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_TRACKED) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str | bytes, TokenBucket] = OrderedDict()

    def take(self, key: str | bytes) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(time.monotonic())


class ProveRates:
    """How often proofs may be asked. The address's budget is taken before the signature is checked
    (it bounds the checking too); the auditor's and the node's only for a registered auditor's signed
    challenge, so that nobody else can spend what auditors need."""

    def __init__(self) -> None:
        self._addresses = Buckets(*PROVES_PER_ADDRESS)
        self._auditors = Buckets(*PROVES_PER_AUDITOR)
        self._all = TokenBucket(*PROVES_IN_ALL)

    def allow_address(self, group: str) -> bool:
        return self._addresses.take(group)

    def allow_auditor(self, auditor_id: bytes) -> bool:
        return self._auditors.take(auditor_id) and self._all.take(time.monotonic())
