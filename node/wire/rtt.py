"""Round-trip-time estimates, per peer address and overall, that set how long a call waits (RFC 6298).

A fixed timeout makes every dead contact cost the whole timeout; waiting for a few round-trip times
instead makes a lookup through a churning mesh fast, while the cap keeps slow links working.
"""

from collections import OrderedDict
from dataclasses import dataclass

from dhtmesh.node.wire.ratelimit import Address

MAX_TRACKED = 4096
MIN_TIMEOUT = 0.25  # an event loop busy for a moment (a burst) must not look like a dead peer
ALPHA = 1 / 8
BETA = 1 / 4


@dataclass(slots=True)
class _Estimate:
    smoothed: float
    variation: float

    def update(self, sample: float) -> None:
        self.variation = (1 - BETA) * self.variation + BETA * abs(self.smoothed - sample)
        self.smoothed = (1 - ALPHA) * self.smoothed + ALPHA * sample

    @property
    def timeout(self) -> float:
        return self.smoothed + 4 * self.variation


class RttEstimator:
    def __init__(self, max_timeout: float) -> None:
        self.max_timeout = max_timeout
        self._overall: _Estimate | None = None
        self._peers: OrderedDict[Address, _Estimate] = OrderedDict()

    def timeout(self, address: Address) -> float:
        """How long to wait for a first reply from `address`: its own estimate, or else the overall
        one (twice over, as a peer we never measured may be farther), within [MIN_TIMEOUT, max]."""
        peer = self._peers.get(address)
        if peer is not None:
            wait = peer.timeout
        elif self._overall is not None:
            wait = 2 * self._overall.timeout
        else:
            wait = self.max_timeout
        return min(self.max_timeout, max(MIN_TIMEOUT, wait))

    def observe(self, address: Address, sample: float) -> None:
        """A reply to a first transmission arrived after `sample` seconds (retransmissions are ambiguous
        and are not observed: Karn's rule)."""
        for estimate in (self._overall, self._peers.get(address)):
            if estimate is not None:
                estimate.update(sample)
        if self._overall is None:
            self._overall = _Estimate(sample, sample / 2)
        if address not in self._peers:
            self._peers[address] = _Estimate(sample, sample / 2)
            if len(self._peers) > MAX_TRACKED:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(address)
