"""Background work a node owns: `TaskSet` for short jobs (a notification, an unsubscribe) and `Supervisor`
for long-lived loops, both cancelled together on shutdown.

No failure is silent. A short job that fails is logged at ERROR with its traceback and counted
(`tasks_failed`); a loop that fails is logged at ERROR with its traceback, counted (`loops_failed` and
`loop_failed.<name>`) and started again after a backoff that doubles up to `MAX_BACKOFF`, so a loop
that fails at once every time neither floods the log nor spins the CPU.
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dhtmesh.node.stats import Counters

log = logging.getLogger(__name__)

MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
# A loop that ran this long before failing was healthy: its next failure starts the backoff afresh.
HEALTHY_RUN = 60.0

Loop = Callable[[], Coroutine[Any, Any, None]]


async def _cancel_all(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class TaskSet:
    def __init__(self, counters: Counters) -> None:
        self._tasks: set[asyncio.Task] = set()
        self._counters = counters

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Start `coroutine` in the background."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._counters.add("tasks_failed")
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        await _cancel_all(list(self._tasks))
        self._tasks.clear()


class Supervisor:
    """Runs named long-lived loops, restarting each one that fails (see the module's docstring)."""

    def __init__(self, counters: Counters, min_backoff: float = MIN_BACKOFF, max_backoff: float = MAX_BACKOFF) -> None:
        self._counters = counters
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, name: str, loop: Loop, detail: str = "") -> asyncio.Task:
        """Run `loop()` under `name` (the counter's name: a fixed word) until cancelled; `detail` tells this
        instance apart in the log (a key, say). Cancel the task returned to stop this loop alone."""
        task = asyncio.get_running_loop().create_task(self._run(name, loop, detail), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, name: str, loop: Loop, detail: str) -> None:
        backoff = self._min_backoff
        label = f"{name} {detail}" if detail else name
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await loop()
                return  # a loop that ends by itself has finished its work
            except Exception as error:
                if asyncio.get_running_loop().time() - started >= HEALTHY_RUN:
                    backoff = self._min_backoff
                self._counters.add("loops_failed")
                self._counters.add(f"loop_failed.{name}")
                log.error("background loop %s failed; restarting in %.1f s", label, backoff, exc_info=error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def close(self) -> None:
        await _cancel_all(list(self._tasks))
        self._tasks.clear()
