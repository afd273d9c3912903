"""Limits a node puts on its peers and clients: token buckets (requests per second, per host and in
all: `RequestLimiter`; per any key: `Buckets`) and slots (things held at once, per host and in all:
`Slots`)."""

import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dhtmesh.node.errors import NodeError
from dhtmesh.node.wire.netgroup import host_of

Address = tuple[str, int]


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float = field(default=0.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


MAX_TRACKED = 4096  # buckets kept, most recently used first: many keys cannot grow memory


class Buckets:
    """A token bucket per key (a host, an auditor id), for the most recently used keys."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_TRACKED) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str | bytes, TokenBucket] = OrderedDict()

    def bucket(self, key: str | bytes, rate: float | None = None) -> TokenBucket:
        """`key`'s bucket, made full on first use; `rate`, if given, is its rate and burst from now on
        (its tokens carry over)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate or self._rate, rate or self._burst)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            if rate is not None:
                bucket.rate = bucket.burst = rate
        return bucket

    def take(self, key: str | bytes, cost: float = 1.0) -> bool:
        return self.bucket(key).take(time.monotonic(), cost)


class RequestLimiter:
    """A global bucket plus one bucket per host (OpenDHT: 8,192 req/s, a peer 1/8 of that).

    Buckets are per host (`netgroup.host_of`: an IPv4 address, an IPv6 /64), not per address: one
    machine sending from many ports gets one machine's budget. A host with a peer that proved its
    identity from its address gets `TRUSTED_FACTOR` times the budget: a busy proxy node legitimately
    sends its replicas two requests per put, and a silent drop costs it a timeout. Buckets are kept
    for the most recently active hosts only, so a flood of spoofed source addresses cannot grow memory
    without bound.
    """

    TRUSTED_FACTOR = 4

    def __init__(self, total_rate: float = 8192.0, per_peer_rate: float = 1024.0, max_peers: int = MAX_TRACKED):
        self._total = TokenBucket(total_rate, total_rate)
        self._per_peer_rate = per_peer_rate
        self._hosts = Buckets(per_peer_rate, per_peer_rate, max_peers)

    def allow(self, address: Address, trusted: bool = False) -> bool:
        return self.allow_host(host_of(address[0]), trusted)

    def allow_host(self, host: str, trusted: bool = False) -> bool:
        """One request from `host` (`netgroup.host_of`), if its budget and everyone's allow it."""
        # A host's budget follows whether a proven peer speaks from it now; its tokens carry over, so
        # alternating proven and unproven ports cannot refill the bucket.
        rate = self._per_peer_rate * (self.TRUSTED_FACTOR if trusted else 1)
        now = time.monotonic()
        return self._hosts.bucket(host, rate).take(now) and self._total.take(now)


def tally(counts: Counter, key: object, delta: int) -> None:
    """Add `delta` to `key`'s count, forgetting a key whose count falls to zero (hosts come and go:
    only those holding something cost memory)."""
    counts[key] += delta
    if counts[key] <= 0:
        del counts[key]


class Full(NodeError):
    """No slot left for this address (`scope` "address") or for anyone (`scope` "total")."""

    def __init__(self, what: str, scope: str) -> None:
        super().__init__(f"too many {what} from your address" if scope == "address" else f"too many {what} at once")
        self.what = what
        self.scope = scope


class Slots:
    """Things held at once (`what`: "connections", "listen streams"...), per host and in total. A host
    with nothing held costs no memory."""

    def __init__(self, what: str, total: float, per_address: int) -> None:
        self.what = what
        self.total = total
        self.per_address = per_address
        self._held: Counter[str] = Counter()
        self.in_use = 0

    def take(self, host: str) -> None:
        """One slot for `host` until `give`; raises `Full` at once if none is left."""
        if self._held[host] >= self.per_address:
            raise Full(self.what, "address")
        if self.in_use >= self.total:
            raise Full(self.what, "total")
        self._held[host] += 1
        self.in_use += 1

    def give(self, host: str) -> None:
        self.in_use -= 1
        tally(self._held, host, -1)

    @contextmanager
    def held(self, host: str) -> Iterator[None]:
        """One slot for `host` while the block runs; raises `Full` at once if none is left."""
        self.take(host)
        try:
            yield
        finally:
            self.give(host)
