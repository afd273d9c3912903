"""Token buckets that cap how many requests a node serves in total and per peer address."""

import time
from collections import OrderedDict
from dataclasses import dataclass, field

Address = tuple[str, int]


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float = field(default=0.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RequestLimiter:
    """A global bucket plus one bucket per address (OpenDHT: 8,192 req/s, a peer 1/8 of that).

    A peer that proved its identity from its address gets `TRUSTED_FACTOR` times the per-address
    budget: a busy proxy node legitimately sends its replicas two requests per put, and a silent drop
    costs it a timeout. Per-address buckets are kept for the most recently active addresses only, so a
    flood of spoofed source addresses cannot grow memory without bound.
    """

    TRUSTED_FACTOR = 4

    def __init__(self, total_rate: float = 8192.0, per_peer_rate: float = 1024.0, max_peers: int = 4096):
        self._total = TokenBucket(total_rate, total_rate)
        self._per_peer_rate = per_peer_rate
        self._peers: OrderedDict[Address, TokenBucket] = OrderedDict()
        self._max_peers = max_peers

    def allow(self, address: Address, trusted: bool = False) -> bool:
        now = time.monotonic()
        bucket = self._peers.get(address)
        rate = self._per_peer_rate * (self.TRUSTED_FACTOR if trusted else 1)
        if bucket is None or bucket.rate != rate:
            bucket = TokenBucket(rate, rate)
            self._peers[address] = bucket
            if len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(address)
        return bucket.take(now) and self._total.take(now)
