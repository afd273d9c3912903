"""A node's lookups over the mesh: `traverse` driven by `dm_find`, one contact at a time.

Every contact a lookup routes through is proven: a first contact is asked with a nonce, and enters the
routing table only once its reply proves it (`Admission`). A lookup may gather a key's values
(`ValueCollector`) and carry a put's value to store along (`StoreAlong`).
"""

import time
from dataclasses import replace

from dhtmesh.node.admission import Admission
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.lookups.traverse import LookupStats, traverse
from dhtmesh.node.lookups.values import StoreAlong, ValueCollector, collect_pages
from dhtmesh.node.routing.contact import Contact, reachable_via
from dhtmesh.node.routing.table import RoutingTable
from dhtmesh.node.rpcs.find import FindReply, FindRequest, call_find
from dhtmesh.node.trace import LookupDone, Tracer
from dhtmesh.node.wire.endpoint import Endpoint, RpcFailure, RpcRefused, new_nonce


class Lookups:
    """Runs a node's lookups; `ongoing` counts those in flight (OpenDHT's `ops`)."""

    def __init__(
        self,
        node_id: bytes,
        config: NodeConfig,
        table: RoutingTable,
        admission: Admission,
        endpoint: Endpoint,
        tracer: Tracer,
        max_pages: int,
    ) -> None:
        self._node_id = node_id
        self._config = config
        self._table = table
        self._admission = admission
        self._endpoint = endpoint
        self._tracer = tracer
        self._max_pages = max_pages  # enough to page through every value a key can hold
        self.ongoing = 0

    async def run(
        self,
        target: bytes,
        collector: ValueCollector | None = None,
        quorum: int = 0,
        store: StoreAlong | None = None,
    ) -> list[Contact]:
        """The k proven nodes closest to `target`; values gathered into `collector` (ending early once
        `quorum` replicas answered), `store`'s value stored along."""
        self.ongoing += 1
        stats = LookupStats() if self._tracer else None  # unobserved, a lookup keeps no stats
        started = time.monotonic() if stats is not None else 0.0
        config = self._config
        # The same question to every contact: built once (a proven one is also handed the put's value).
        plain = collector.wanted.request(target) if collector is not None else FindRequest(target)
        carrying = replace(plain, carried=store.carried) if store is not None else plain
        try:
            return await traverse(
                target,
                self._table.closest(target),
                lambda contact: self._find(contact, (plain, carrying), collector, store),
                k=config.k,
                alpha=config.alpha,
                exclude=self._node_id,
                satisfied=lambda: bool(quorum) and collector is not None and collector.holders >= quorum,
                diversity=config.diversity,
                per_referrer=config.per_referrer,
                stats=stats,
            )
        finally:
            self.ongoing -= 1
            if stats is not None:
                purpose = "put" if store is not None else "values" if collector is not None else "nodes"
                seconds = time.monotonic() - started
                self._tracer.lookup_done(LookupDone(target, purpose, stats.hops, stats.asked, stats.answered, seconds))

    async def _find(
        self,
        contact: Contact,
        requests: tuple[FindRequest, FindRequest],
        collector: ValueCollector | None,
        store: StoreAlong | None,
    ) -> list[Contact] | None:
        """Ask one contact; `requests` is the question for an unproven contact and for a proven one."""
        admission = self._admission
        if admission.recently_unreachable(contact.address):
            return None
        nonce = None if admission.is_proven(contact.address, contact.node_id) else new_nonce()
        request = requests[0] if nonce is not None else requests[1]
        try:
            raw = await call_find(self._endpoint, contact.address, request, nonce)
        except RpcRefused:
            return None  # alive, but unwilling: not a contact to drop
        except RpcFailure:
            admission.forget(contact)
            return None
        if nonce is not None and not admission.accept_proof(contact, nonce, raw.proof):
            return None  # nothing it sent is read: not even decoded
        reply = FindReply.from_wire(raw.payload, values=collector is not None)
        if nonce is None:
            self._table.add(contact)
        if store is not None:
            store.note(contact, reply)
        found = [c for c in reply.nodes or [] if reachable_via(contact.host, c.host)]
        if collector is not None:
            await collect_pages(self._endpoint, contact, reply, collector, self._max_pages)
            collector.holders += reply.holds
        return found
