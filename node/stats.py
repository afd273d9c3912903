"""Counters a node keeps about itself (bad input, drops, RPC traffic), reported by `info()`, and the log
of its own unexpected errors (`ErrorLog`)."""

import logging
import time
from collections import Counter

log = logging.getLogger(__name__)

REPORT_INTERVAL = 60.0  # seconds between two logged tracebacks of one exception type


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


class ErrorLog:
    """Counts every unexpected exception under `counter` and logs the first of each type per
    `REPORT_INTERVAL` with its traceback. Anyone can reach an entry point, and a bug on it fails on
    every request: a traceback for each would let any client fill the operator's log."""

    def __init__(self, counters: Counters, counter: str) -> None:
        self._counters = counters
        self._counter = counter
        self._logged: dict[type, float] = {}

    def internal(self, error: BaseException, where: str) -> None:
        self._counters.add(self._counter)
        kind = type(error)
        now = time.monotonic()
        last = self._logged.get(kind)
        if last is not None and now - last < REPORT_INTERVAL:
            return
        self._logged[kind] = now
        log.error(
            "internal error in %s: %s (more of this type in the next %.0f s are only counted, as %s)",
            where,
            kind.__name__,
            REPORT_INTERVAL,
            self._counter,
            exc_info=error,
        )
