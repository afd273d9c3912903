"""Request counting for `/node/stats`: totals and a rate over the last minute."""

import time
from collections import deque

WINDOW = 60


class RequestStats:
    def __init__(self) -> None:
        self.started = time.time()
        self.total = 0
        self._per_second: deque[list[int]] = deque()  # [second, count], oldest first

    def count(self) -> None:
        self.total += 1
        second = int(time.monotonic())
        if self._per_second and self._per_second[-1][0] == second:
            self._per_second[-1][1] += 1
        else:
            self._per_second.append([second, 1])
        self._trim(second)

    def rate(self) -> float:
        """Requests per second over the last `WINDOW` seconds."""
        self._trim(int(time.monotonic()))
        return sum(count for _, count in self._per_second) / WINDOW

    def _trim(self, now: int) -> None:
        while self._per_second and self._per_second[0][0] <= now - WINDOW:
            self._per_second.popleft()
