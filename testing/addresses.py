"""Loopback addresses for the nodes a test or a benchmark starts.

Every node gets a loopback address of its own, in a /24 of its own: nodes limit what one host or subnet
may hold of their routing table and of a key's replicas, so a mesh of many nodes on 127.0.0.1 would look
like one machine faking many, which is the attack those limits stop. 127.0.0.0/8 is all loopback on
Linux; 127.0.0.1 is left to the attackers tests play (`ATTACKER`). Each pytest-xdist worker draws from a
range of its own, so that two workers never hand out the same address.
"""

import itertools
import os

from dhtmesh.node.wire import netgroup

ATTACKER = "127.0.0.1"  # where the tests' hostile peers sit; honest nodes each have an address of their own
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
# One counter for the whole process, on purpose: an address must not be handed out twice in one run,
# whichever test, fixture or mesh asks for it.
_hosts = itertools.count(1 + 16384 * _WORKER)


def loopback_host() -> str:
    """A loopback address no other node of this process has (in this worker's range), in a /24 of its
    own. Outside pytest-xdist the first is 127.0.1.1, as `netgroup.loopback_host(1)`."""
    return netgroup.loopback_host(next(_hosts))
