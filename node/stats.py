"""Counters a node keeps about itself (bad input, drops, RPC traffic), reported by `info()`."""

from collections import Counter


class Counters:
    """Named monotonically increasing counters; one instance per node, passed to whoever counts."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        self._counts[name] += amount

    def get(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))
