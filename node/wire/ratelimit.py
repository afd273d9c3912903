"""Token buckets that cap how many requests a node serves in total and per peer host."""

import time
from collections import OrderedDict
from dataclasses import dataclass, field

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

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


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

    def __init__(self, total_rate: float = 8192.0, per_peer_rate: float = 1024.0, max_peers: int = 4096):
        self._total = TokenBucket(total_rate, total_rate)
        self._per_peer_rate = per_peer_rate
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_peers = max_peers

    def allow(self, address: Address, trusted: bool = False) -> bool:
        now = time.monotonic()
        host = host_of(address[0])
        bucket = self._peers.get(host)
        rate = self._per_peer_rate * (self.TRUSTED_FACTOR if trusted else 1)
        if bucket is None:
            bucket = TokenBucket(rate, rate)
            self._peers[host] = bucket
            if len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        else:
            # A host's budget follows whether a proven peer speaks from it now; its tokens carry over,
            # so alternating proven and unproven ports cannot refill the bucket.
            bucket.rate = bucket.burst = rate
            self._peers.move_to_end(host)
        return bucket.take(now) and self._total.take(now)
