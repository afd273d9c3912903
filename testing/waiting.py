"""Waiting for a condition, asked again and again until it holds or time runs out, instead of a fixed
sleep that is either too short on a busy machine or too long everywhere else."""

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def eventually(condition: Callable[[], Any], within: float = 10.0, every: float = 0.05) -> None:
    """Wait until `condition()` (or the awaitable it returns) is true, asking again `every` s; fail
    (AssertionError) after `within` s. A sync caller waits with `asyncio.run(eventually(...))`."""
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)
