"""node/trace.py: a `NodeTrace` registered on a real node (in-process mesh on loopback) is told of every
RPC exchange the node makes, retries and timeouts included, and of every lookup, with its purpose."""

import os
from dataclasses import dataclass, field

from dhtmesh.node.trace import LookupDone, NodeTrace, RpcDone, RpcSent
from dhtmesh.node.values import Value, new_value_id
from dhtmesh.testing import start_node

from conftest import MeshFactory


@dataclass
class Seen:
    sent: list[RpcSent] = field(default_factory=list)
    done: list[RpcDone] = field(default_factory=list)
    lookups: list[LookupDone] = field(default_factory=list)

    def trace(self) -> NodeTrace:
        return NodeTrace(
            on_rpc_sent=[self.sent.append], on_rpc_done=[self.done.append], on_lookup_done=[self.lookups.append]
        )


async def test_every_request_and_every_lookup_of_a_node_is_observed(make_mesh: MeshFactory) -> None:
    nodes = await make_mesh(5)
    watched, seen = nodes[0], Seen()
    # Read and registered with no await between: every request the counter counts from here is reported.
    requests_before = watched.counters.get("rpc_out")
    watched.add_trace(seen.trace())
    key = os.urandom(20)
    value = Value(new_value_id(), b"observed")
    result = await watched.put(key, value)
    assert value in await watched.get(key)
    await watched.lookup(os.urandom(20))

    assert result.replicas >= 1
    first_attempts = [event for event in seen.sent if event.attempt == 0]
    assert len(first_attempts) == watched.counters.get("rpc_out") - requests_before
    peers = {node.address for node in nodes[1:]}
    finds = [event for event in seen.done if event.name == "dm_find"]
    assert finds and all(event.replied and event.address in peers for event in finds)
    assert {(event.target, event.purpose) for event in seen.lookups} >= {(key, "put"), (key, "values")}
    assert "nodes" in {event.purpose for event in seen.lookups}
    for event in seen.lookups:
        assert 1 <= event.answered <= event.asked
        assert event.hops >= 1


async def test_a_peer_that_never_answers_shows_as_a_retry_then_a_timeout(make_mesh: MeshFactory) -> None:
    (watched,) = await make_mesh(1)
    gone = await start_node()
    address = gone.address
    await gone.stop()
    seen = Seen()
    watched.add_trace(seen.trace())

    await watched.join([address])

    assert [(event.name, event.attempt) for event in seen.sent] == [("dm_hello", 0), ("dm_hello", 1)]
    assert [(event.name, event.address, event.replied) for event in seen.done] == [("dm_hello", address, False)]
    assert watched.counters.get("rpc_timeouts") == 1


async def test_traces_registered_on_one_node_see_nothing_of_another(make_mesh: MeshFactory) -> None:
    watched, other = await make_mesh(2)
    seen = Seen()
    watched.add_trace(seen.trace())
    await other.lookup(os.urandom(20))
    assert not seen.lookups
    assert all(event.address != watched.address for event in seen.sent)
