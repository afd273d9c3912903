"""`python -m dhtmesh.testing.liar run ...`: `dhtmesh` whose worker lies, for tests of redundancy.

It computes every slice as an honest worker does, then reports a wrong value (the right one wrapped
in a list), signed with its own key as any worker signs: what a hostile or broken worker sends. The
mesh must outvote it and count it in its standing.
"""

import sys

import orjson

from dhtmesh.cli.main import main
from dhtmesh.node import services
from dhtmesh.node.jobs.sandbox import SandboxPool, SliceOutcome


class LyingPool(SandboxPool):
    async def run(self, job: bytes, function: str, args: list, data: list, timeout_ms: int) -> list[SliceOutcome]:
        honest = await super().run(job, function, args, data, timeout_ms)
        return [_lie(outcome) for outcome in honest]


def _lie(outcome: SliceOutcome) -> SliceOutcome:
    if outcome.value is None:
        return outcome
    return SliceOutcome(orjson.dumps([orjson.loads(outcome.value)]), None, outcome.cpu_ms)


if __name__ == "__main__":
    services.SandboxPool = LyingPool  # type: ignore[misc]  # the worker's pool (and the deploy checker's)
    sys.exit(main(sys.argv[1:]))
