"""dhtmesh's test kit, in the spirit of aiohttp's `test_utils`: what the tests, the benchmarks and
`scripts/mesh` use to build and watch real nodes, so that none of them keeps its own copy.

* `addresses`: a loopback address of its own for every node (`loopback_host`), `ATTACKER`;
* `meshes`: in-process nodes (`start_node`, the tests' `FAST` settings), joined meshes (`Mesh`), a node
  with its HTTP proxy (`ProxiedNodes`);
* `processes`: `dhtmesh run` processes (`ProcessGroup`, `NodeProcess`), the one reader of their `ready`
  line (`wait_ready`), short CLI commands (`run_cli`);
* `waiting`: `eventually(condition)`, the wait for a condition instead of a fixed sleep;
* `datagrams`: what nodes send (`watch_datagrams`), one hand-made request from a bare socket
  (`udp_request`).

Nothing in the package imports it (it is the top layer), and it imports no pytest: scripts use it too.
"""

from dhtmesh.testing.addresses import ATTACKER, loopback_host
from dhtmesh.testing.datagrams import udp_request, watch_datagrams
from dhtmesh.testing.meshes import FAST, Mesh, ProxiedNodes, join_mesh, start_node
from dhtmesh.testing.processes import DHTMESH, NodeProcess, ProcessGroup, run_cli, wait_ready
from dhtmesh.testing.waiting import eventually

__all__ = [
    "ATTACKER",
    "DHTMESH",
    "FAST",
    "Mesh",
    "NodeProcess",
    "ProcessGroup",
    "ProxiedNodes",
    "eventually",
    "join_mesh",
    "loopback_host",
    "run_cli",
    "start_node",
    "udp_request",
    "wait_ready",
    "watch_datagrams",
]
