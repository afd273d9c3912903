"""`DhtNode`: one Kademlia node — its socket, routing table, store and listeners — and its public API.

The API is what the proxy, the services and the CLI call: `put` (and the signed and encrypted puts of
`signing.py`), `get`, `get_stream`, `listen` (`listening.py`), `cancel_put`, `join`, `lookup`, `info`;
this node's own copies (`held`, `held_value`, `keep_announcing`, `forget_key`) and its routing table
(`contact_count`, `contacts`, `known_contact`, `table_health`); `add_trace` lets an observer (a
benchmark, metrics) watch its RPCs and lookups. Lookups (`lookups/query.py`) prove every contact they
route through.

Its parts (`store`, `table`, `hub`, `endpoint`, `admission`) are the core's own: its RPC handlers,
replication and the core's tests reach them; nothing outside `node/`'s core does
(`tests/test_layers.py` holds the tree to that).
"""

import asyncio
import logging
import math
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dhtmesh.crypto import opendht
from dhtmesh.crypto.identity import Identity
from dhtmesh.node.admission import Admission
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.listeners import ListenerHub
from dhtmesh.node.listening import Listening, ListenRefused
from dhtmesh.node.lookups.query import Lookups
from dhtmesh.node.lookups.values import ALL_VALUES, STORE_ALONG_MAX, StoreAlong, ValueCollector, Wanted
from dhtmesh.node.replication import Replicator
from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.routing.table import RoutingTable
from dhtmesh.node.rpcs.find import PAGE_ENTRIES
from dhtmesh.node.rpcs.mesh import register_mesh_rpcs
from dhtmesh.node.rpcs.stock import StockRpcs
from dhtmesh.node.rpcs.storing import Carried, StoreRequest, call_store
from dhtmesh.node.signing import PutOptions, PutRefused, PutResult, SignedPuts
from dhtmesh.node.stats import Counters
from dhtmesh.node.storage.store import LOCAL_ORIGIN, ValueStore
from dhtmesh.node.tasks import Supervisor, TaskSet
from dhtmesh.node.trace import NodeTrace, Tracer
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.rules import ValueRules
from dhtmesh.node.values.value import Value
from dhtmesh.node.wire.endpoint import Endpoint, RpcFailure, RpcRefused
from dhtmesh.node.wire.netgroup import format_host_port
from dhtmesh.node.wire.ratelimit import Address, RequestLimiter

# Re-exported: the node's API names them (the proxy and the CLI import them from here).
__all__ = ["STORE_ALONG_MAX", "DhtNode", "ListenRefused", "PutOptions", "PutRefused", "PutResult"]

log = logging.getLogger(__name__)


class DhtNode(SignedPuts, Listening):
    """One node of the mesh and its public API (see the module's docstring)."""

    def __init__(
        self,
        identity: Identity,
        config: NodeConfig | None = None,
        data_dir: Path | None = None,
        opendht_identity: opendht.RsaIdentity | None = None,
        *,
        rules: ValueRules,
    ) -> None:
        self.identity = identity
        # What values must pass beyond their own fields: the mesh's record rules, given by the builder,
        # so that the core knows no record kind (`node.records.rules.RECORD_RULES`).
        self.rules = rules
        # When set, values signed or encrypted for a caller (`put_signed`, `put_encrypted_opendht`) are
        # OpenDHT's, so OpenDHT clients can check them; the node's own records stay Ed25519.
        self.opendht_identity = opendht_identity
        self.node_id = identity.node_id
        self.config = config or NodeConfig()
        self.data_dir = data_dir
        self.counters = Counters()
        self.table = RoutingTable(self.node_id, self.config.k, diversity=self.config.diversity)
        self.store = ValueStore(
            data_dir / "values.sqlite3" if data_dir else None,
            self.config.quotas,
            may_follow=rules.may_follow,
            open_refresh=rules.open_refresh,
            per_host=rules.per_host,
        )
        self._migrate_store()
        self.hub = ListenerHub(self.counters, on_last_closed=self._stop_listening)
        self._tracer = Tracer()
        self.endpoint = Endpoint(
            self.node_id,
            lambda nonce: self.admission.prove(nonce),
            self.counters,
            is_trusted=lambda address: self.admission.is_proven_address(address),
            limiter=RequestLimiter(self.config.total_request_rate, self.config.peer_request_rate),
            timeout=self.config.rpc_timeout,
            max_in_flight=self.config.max_in_flight,
            stray_nonce=lambda message_id, address: self.admission.cookie_nonce(message_id, address),
            on_stray=lambda address, nonce, envelope: self.admission.take_cookie_reply(address, nonce, envelope),
            tracer=self._tracer,
        )
        self.admission = Admission(identity, self.endpoint, self.table, self.counters, self._on_admitted)
        # A reader must be able to page through every value a key can hold.
        max_pages = -(-self.config.quotas.max_values_per_key // PAGE_ENTRIES) + 1
        self._lookups = Lookups(
            self.node_id, self.config, self.table, self.admission, self.endpoint, self._tracer, max_pages
        )
        self.replicator = Replicator(self)
        StockRpcs(self).register(self.endpoint)
        register_mesh_rpcs(self, self.endpoint)
        self._tasks = TaskSet(self.counters)
        self.loops = Supervisor(self.counters)  # the node's own long-lived loops
        self._keepers: dict[bytes, asyncio.Task] = {}
        self._subscribed: dict[bytes, list[Contact]] = {}
        self._started = time.time()

    def _migrate_store(self) -> None:
        """Bring a store written under older record rules up to these, once: what they refuse is
        dropped, and this node's own records whose key moved are signed again under their new key (to
        be announced at once). So every value in the store passes the rules, and what leaves it for a
        reader, a listener or a service needs no second check."""
        if self.store.rules_version >= self.rules.version:
            return
        for key, value in self.store.announces():
            if self.rules.passes(key, value):
                continue
            self.store.remove_announce(key, value.id)
            moved_to = self.rules.key_of(value)
            if moved_to is not None and value.owner == self.identity.public_key:
                self.store.add_announce(moved_to, self.sign(moved_to, value))
        dropped = self.store.purge(self.rules.passes)
        self.store.rules_version = self.rules.version
        if dropped:
            log.warning("dropped %d stored values that the record rules of this version refuse", dropped)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind the UDP socket (raises `OSError` with its errno, e.g. EADDRINUSE) and start serving."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: self.endpoint, sock=sock)
        self._started = time.time()
        self.loops.start("sweep", self._sweep_loop)
        self.replicator.start()

    async def stop(self) -> None:
        await self.loops.close()  # the keepers among them
        self._keepers.clear()
        self._subscribed.clear()
        await self.replicator.stop()
        await self._tasks.close()
        await self.endpoint.close()
        self.store.close()

    @property
    def address(self) -> Address:
        return self.endpoint.address

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        """The node's UDP socket once started (a benchmark counts what it sends)."""
        return self.endpoint.transport

    def add_trace(self, trace: NodeTrace) -> None:
        """Have `trace`'s callbacks told of this node's RPC exchanges and lookups (see `node.trace`)."""
        self._tracer.add(trace)

    @property
    def contact(self) -> Contact:
        """How peers see this node in their routing tables."""
        return Contact(self.node_id, *self.address)

    # ---- joining ------------------------------------------------------------------------------

    async def join(self, addresses: list[Address]) -> int:
        """Prove ourselves to, and prove, each address; then look up our own id. Returns contacts known."""
        own = self.address
        peers = [a for a in addresses if a != own]
        await asyncio.gather(*(self.admission.challenge(a) for a in peers))
        if len(self.table):
            await self.lookup(self.node_id)
        return len(self.table)

    # ---- lookups ------------------------------------------------------------------------------

    async def lookup(self, target: bytes) -> list[Contact]:
        """The k proven nodes closest to `target`."""
        return await self._lookups.run(target)

    # ---- values -------------------------------------------------------------------------------

    async def get(self, key: bytes, value_id: int | None = None, value_type: int | None = None) -> list[Value]:
        """The live values under `key` (only those with `value_id` and of `value_type`, if given:
        replicas then send just those), gathered from the closest replicas (until `get_quorum` of them
        answered) and merged by (owner, id), highest seq."""
        if value_id == 0:
            raise ValueError("value id 0 is not a value's id")
        values, _ = await self._gather(key, self.config.get_quorum, Wanted(value_id, value_type))
        return values

    async def get_held(
        self, key: bytes, value_id: int | None = None, value_type: int | None = None
    ) -> list[tuple[Value, int]]:
        """`get`'s values, each with how many replicas (this node's own copy included) returned it."""
        if value_id == 0:
            raise ValueError("value id 0 is not a value's id")
        collector, _ = await self._collect(key, self.config.get_quorum, Wanted(value_id, value_type))
        return collector.counted()

    async def get_stream(self, key: bytes) -> AsyncIterator[Value]:
        """The values under `key` as they arrive: this node's own first, then each value (or newer
        version of one) that the lookup finds. Ends when the lookup does."""
        found: asyncio.Queue[Value | None] = asyncio.Queue()
        collector = ValueCollector(key, self.store.get(key), self.rules.check, on_new=found.put_nowait)
        for value in collector.result():
            yield value
        lookup = asyncio.get_running_loop().create_task(self._lookups.run(key, collector, self.config.get_quorum))
        lookup.add_done_callback(lambda _: found.put_nowait(None))
        self.counters.add("gets")
        try:
            while (value := await found.get()) is not None:
                yield value
        finally:
            lookup.cancel()
            await asyncio.gather(lookup, return_exceptions=True)

    async def _gather(
        self, key: bytes, quorum: int = 0, wanted: Wanted = ALL_VALUES
    ) -> tuple[list[Value], list[Contact]]:
        collector, nodes = await self._collect(key, quorum, wanted)
        return collector.result(), nodes

    async def _collect(self, key: bytes, quorum: int, wanted: Wanted) -> tuple[ValueCollector, list[Contact]]:
        collector = ValueCollector(key, self.store.get(key, wanted.value_type), self.rules.check, wanted=wanted)
        nodes = await self._lookups.run(key, collector, quorum)
        self.counters.add("gets")
        return collector, nodes

    async def put(
        self, key: bytes, value: Value, *, permanent: bool = False, until: float = math.inf, client: str = ""
    ) -> PutResult:
        """Store `value` here and on the k closest nodes; raises `InvalidValue` or `PutRefused`. A
        permanent value is re-announced until cancelled, or until the wall-clock time `until` unless
        put again before then (OpenDHT's proxy keeps a client's permanent put 24 h after each refresh).
        `client` names the proxy client a permanent put is for (empty: the node's own); only that
        client may cancel it (`cancel_put`), and it may have only so many (`Quotas`)."""
        self.rules.check(key, value)
        if self.rules.lifetime(value) <= 0:
            raise PutRefused(Verdict.REFUSE_EXPIRED)  # past the time its signer gave it
        refusal = self.store.announce_refusal(key, value, client) if permanent else None
        if refusal is not None:
            raise PutRefused(refusal)
        verdict = self.store_locally(key, value)
        if not verdict.accepted:
            raise PutRefused(verdict)
        if permanent and not self.store.add_announce(key, value, until, client):
            raise PutRefused(Verdict.REFUSE_STORAGE_ERROR)
        self.counters.add("puts")
        return await self.announce(key, value)

    def store_locally(self, key: bytes, value: Value) -> Verdict:
        """This node's own copy of a value it puts or re-announces (checked already)."""
        verdict = self.store.put(key, value, origin=LOCAL_ORIGIN, ttl=self.rules.lifetime(value))
        self._count_verdict(verdict)
        if verdict in (Verdict.NEW, Verdict.UPDATE):
            self._on_new_value(key, value)
        return verdict

    async def announce(self, key: bytes, value: Value) -> PutResult:
        """Send `value` to the k closest nodes; the result counts those that accepted it."""
        ttl = self.rules.lifetime(value)
        if ttl <= 0:
            return PutResult(value, 0, 0)  # past the time its signer gave it: nobody would take it
        if value.size > STORE_ALONG_MAX:
            nodes = await self.lookup(key)
            accepted = await asyncio.gather(*(self.store_on(contact, key, value, ttl) for contact in nodes))
            return PutResult(value, sum(accepted), len(nodes))
        along = StoreAlong(Carried(value, ttl), set(), set())
        nodes = await self._lookups.run(key, store=along)
        replicas = sum(c.node_id in along.accepted for c in nodes)
        late = [c for c in nodes if c.node_id in along.unanswered]
        if late:
            replicas += sum(await asyncio.gather(*(self.store_on(contact, key, value, ttl) for contact in late)))
        return PutResult(value, replicas, len(nodes))

    async def store_on(self, contact: Contact, key: bytes, value: Value, ttl: float, by: bytes | None = None) -> bool:
        """Ask one node to hold `value`; `by`, on a hand-off or repair, names the peer that stored it
        with us (or us), so that its refreshes keep counting on the new replica too."""
        try:
            return await call_store(self.endpoint, contact.address, StoreRequest(key, Carried(value, ttl, by)))
        except RpcRefused:
            return False
        except RpcFailure:
            self.admission.forget(contact)
            return False

    def cancel_put(self, key: bytes, value_id: int, client: str | None = None) -> bool:
        """Stop re-announcing a permanent value (only if it is `client`'s, if given); it then expires on
        its replicas as any other."""
        return self.store.remove_announce(key, value_id, client)

    def permanent_puts(self, key: bytes | None = None, client: str | None = None) -> list[tuple[bytes, Value]]:
        """The permanent values this node keeps announcing (under `key`, of `client`, if given), with
        their keys."""
        return self.store.announces(key, client)

    def accept_store(
        self, key: bytes, value: Value, *, origin: str, ttl: float, sender: bytes = b"", by: bytes | None = None
    ) -> Verdict:
        """A peer asks us to hold a value: check it against the rules (raises `InvalidValue`), bound
        its life, apply policy and quotas, then tell listeners. Every way a value comes from a peer
        (stock store, dm_store, a put's store-along) comes through here. `origin` is what the value is
        charged to; `sender` the proven peer's id (empty for stock peers), `by` the storer it names."""
        self.rules.check(key, value)
        ttl = min(ttl, self.rules.lifetime(value))
        if ttl <= 0:
            verdict = Verdict.REFUSE_EXPIRED
        else:
            verdict = self.store.put(key, value, origin=origin, ttl=ttl, sender=sender, by=by)
        self.counters.add("stores_accepted" if verdict.accepted else "stores_refused")
        self._count_verdict(verdict)
        if verdict in (Verdict.NEW, Verdict.UPDATE):
            self._on_new_value(key, value)
        return verdict

    def _count_verdict(self, verdict: Verdict) -> None:
        if verdict in (Verdict.REFUSE_DISK_FULL, Verdict.REFUSE_STORAGE_ERROR):
            self.counters.add("storage_errors")

    # ---- this node's own copies -------------------------------------------------------------

    def held(self, key: bytes) -> list[Value]:
        """This node's own copies of the values under `key` (every one passes the rules: see
        `_migrate_store`)."""
        return self.store.get(key)

    def held_value(self, key: bytes, owner: bytes, value_id: int) -> Value | None:
        """This node's own copy of one value under `key`, if it holds one."""
        return self.store.get_one(key, owner, value_id)

    def keep_announcing(self, key: bytes, value: Value) -> bool:
        """Re-announce `value` (one this node holds, put by someone else) as if it were a permanent put of
        its own, until cancelled; False if the disk refused to remember it."""
        return self.store.add_announce(key, value)

    def forget_key(self, key: bytes) -> int:
        """Drop this node's own copies of `key`'s values (their replicas keep theirs); returns how many."""
        return self.store.purge(lambda stored_key, value: stored_key != key)

    # ---- the routing table -----------------------------------------------------------------------

    def contact_count(self) -> int:
        """Proven contacts in the routing table."""
        return len(self.table)

    def contacts(self) -> list[Contact]:
        return self.table.contacts()

    def known_contact(self, node_id: bytes) -> Contact | None:
        """The routing table's contact of `node_id`, if it has one (no lookup)."""
        return self.table.get(node_id)

    def table_health(self, family: int | None = None) -> tuple[int, int]:
        """(good, dubious) contacts, of one address family (4 or 6) when given (`RoutingTable.health`)."""
        return self.table.health(family)

    # ---- routing events -----------------------------------------------------------------------

    def _on_admitted(self, contact: Contact) -> None:
        self.replicator.welcome(contact)

    # ---- reporting ----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        families = {}
        for family in (4, 6):  # contacts counted by the family of their address, as OpenDHT counts them
            good, dubious = self.table.health(family)
            families[f"ipv{family}"] = {"good": good, "dubious": dubious, "incoming": self.table.incoming(family)}
        opendht_id = {"id": self.opendht_identity.key_id.hex()} if self.opendht_identity else {}
        return {
            "node_id": self.node_id.hex(),
            **opendht_id,  # as OpenDHT's node info names the node's public key id when it has an identity
            **families,
            "ops": self._lookups.ongoing,
            "address": format_host_port(*self.address),
            "listeners": self.hub.listener_count(),
            "subscribers": self.hub.subscription_count(),
            "started": self._started,
            **self.store.counts(),
            "counters": self.counters.snapshot(),
        }
