"""Loopback addresses for the nodes a test or a benchmark starts.

Every node gets a loopback address of its own, in a /24 of its own: nodes limit what one host or subnet
may hold of their routing table and of a key's replicas, so a mesh of many nodes on 127.0.0.1 would look
like one machine faking many, which is the attack those limits stop. 127.0.0.0/8 is all loopback on
Linux; 127.0.0.1 is left to the attackers tests play (`ATTACKER`). The 65,535 addresses
(`netgroup.loopback_host`'s indexes) are split between the pytest-xdist workers (`worker_indexes`), so
that two workers never hand out the same address, however many there are.
"""

import os

from dhtmesh.node.wire import netgroup

ATTACKER = "127.0.0.1"  # where the tests' hostile peers sit; honest nodes each have an address of their own
INDEXES = 65535  # netgroup.loopback_host's indexes: 1 to 65535


def worker_indexes(worker: str, workers: int) -> range:
    """The indexes the xdist worker `worker` (`gw0`, `gw1`, ...; `PYTEST_XDIST_WORKER`) of `workers`
    (`PYTEST_XDIST_WORKER_COUNT`) hands out: an equal share of 1..65535, its own."""
    number = int(worker.removeprefix("gw") or 0)
    if not 0 <= number < workers:
        raise ValueError(f"worker {worker!r} is not one of {workers} workers")
    share = INDEXES // workers
    return range(1 + number * share, 1 + (number + 1) * share)


_INDEXES = worker_indexes(
    os.environ.get("PYTEST_XDIST_WORKER", "gw0"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
)
# One iterator for the whole process, on purpose: an address must not be handed out twice in one run,
# whichever test, fixture or mesh asks for it.
_hosts = iter(_INDEXES)


def loopback_host() -> str:
    """A loopback address no other node of this process has (in this worker's range), in a /24 of its
    own. Outside pytest-xdist the first is 127.0.1.1, as `netgroup.loopback_host(1)`."""
    index = next(_hosts, None)
    if index is None:
        raise RuntimeError(f"this process has handed out all its {len(_INDEXES)} loopback addresses")
    return netgroup.loopback_host(index)
