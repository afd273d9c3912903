"""`DhtNode`: one Kademlia node — its socket, routing table, store and listeners — and its public API.

The API is what the proxy and the CLI call: `put`, `get`, `listen`, `cancel_put`, `join`, `info`;
`add_trace` lets an observer (a benchmark, metrics) watch its RPCs and lookups.
Lookups use `traverse` over `_find`, which proves every contact it routes through.
"""

import asyncio
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict, Unpack

from dhtmesh.crypto import opendht
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.crypto.sealed import SealedBoxError, seal_to
from dhtmesh.node.admission import Admission
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.errors import NodeError
from dhtmesh.node.listeners import Listener, ListenerHub
from dhtmesh.node.lookups.traverse import LookupStats, traverse
from dhtmesh.node.replication import Replicator
from dhtmesh.node.routing.contact import Contact, contact_from_wire, reachable_via
from dhtmesh.node.routing.table import RoutingTable
from dhtmesh.node.rpcs.mesh import PAGE_ENTRIES, MeshRpcs
from dhtmesh.node.rpcs.stock import StockRpcs
from dhtmesh.node.stats import Counters
from dhtmesh.node.storage.store import LOCAL_ORIGIN, ValueStore
from dhtmesh.node.tasks import Supervisor, TaskSet
from dhtmesh.node.trace import LookupDone, NodeTrace, Tracer
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.rules import ValueRules
from dhtmesh.node.values.types import CERTIFICATE_TYPE
from dhtmesh.node.values.value import (
    MAX_OPENDHT_SEQ,
    InvalidValue,
    Value,
    certificate_public_key,
    certificate_value,
    encrypt_opendht_value,
    new_value_id,
    sign_opendht_value,
    sign_value,
    value_from_wire,
)
from dhtmesh.node.wire.endpoint import Endpoint, RpcFailure, RpcRefused, new_nonce
from dhtmesh.node.wire.netgroup import format_host_port
from dhtmesh.node.wire.ratelimit import Address, RequestLimiter

log = logging.getLogger(__name__)

# A put of a value up to this size rides on the lookup's find requests (one datagram each), so the k
# closest hold it when the lookup ends, with no second round of stores. Bigger values are sent only to
# the k closest, once known: a few extra replicas on nodes the lookup passed through cost too much.
STORE_ALONG_MAX = 768


class ListenRefused(NodeError):
    """This node already listens to as many keys as it may (`NodeConfig.max_listened_keys`)."""


class PutRefused(NodeError):
    """The value was refused by this node's own store (stale seq, edit of an unsigned value, quota...)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.value)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class _StoreAlong:
    """A value a put's lookup asks every node it queries to store, and which of them accepted it."""

    wire: list
    ttl: float
    accepted: set[bytes]
    # Contacts that answered without a verdict on the value: unproven ones are never sent it along (a
    # reflector could fill a find reply with a victim's address), older nodes ignore it. They get a
    # plain store if they end up among the k closest.
    unanswered: set[bytes]


class PutOptions(TypedDict, total=False):
    """How a put is kept (`DhtNode.put`): whether it is `permanent`, `until` when, for which `client`."""

    permanent: bool
    until: float
    client: str


@dataclass(frozen=True, slots=True)
class PutResult:
    value: Value
    replicas: int  # remote nodes that accepted the value
    asked: int  # remote nodes it was sent to

    @property
    def stored(self) -> int:
        """Copies that now exist: the remote replicas plus this node's own."""
        return self.replicas + 1


@dataclass(frozen=True, slots=True)
class Wanted:
    """Which values of a key a read wants: all, only one id, only one type. Replicas are asked to send
    only those, so values of other types (or other ids) can neither slow a read nor crowd it out."""

    value_id: int | None = None
    value_type: int | None = None

    def __contains__(self, value: Value) -> bool:
        return (self.value_id is None or value.id == self.value_id) and (
            self.value_type is None or value.type == self.value_type
        )

    def query(self) -> dict[str, Any]:
        """What a find asks a replica for."""
        asked: dict[str, Any] = {"v": True}
        if self.value_id is not None:
            asked["w"] = self.value_id
        if self.value_type is not None:
            asked["y"] = self.value_type
        return asked


class _ValueCollector:
    """Merges the values a lookup gathers: one per (owner, id), the highest seq wins.

    Replicas send big values as references, fetched from the replica that offered them unless a newer
    or equal version is already here. A replica counts as a holder only once its values are in hand.
    """

    def __init__(
        self,
        key: bytes,
        initial: list[Value],
        check: Callable[[bytes, Value], None],
        on_new: Callable[[Value], None] | None = None,
        wanted: Wanted = Wanted(),
    ) -> None:
        self.key = key
        self._check = check  # the node's rules (`ValueRules.check`)
        self.wanted = wanted
        self.values: dict[tuple[bytes, int], Value] = {v.identity: v for v in initial if v in wanted}
        self._on_new = on_new
        self.holders = 1 if self.values else 0  # replicas that returned values, this node included

    def offer(self, raw: Any) -> None:
        try:
            value = value_from_wire(raw)
            current = self.values.get(value.identity)
            if value not in self.wanted or (current is not None and value.seq <= current.seq):
                return  # not taken, so not worth a signature check (replicas mostly agree)
            self._check(self.key, value)
        except InvalidValue:
            return
        self.values[value.identity] = value
        if self._on_new is not None:
            self._on_new(value)

    def wants(self, ref: Any) -> tuple[bytes, int] | None:
        """The identity to fetch for a reference `[owner, id, seq]`, unless we hold that version."""
        if not (isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], bytes)):
            return None
        owner, value_id, seq = ref
        if not (isinstance(value_id, int) and isinstance(seq, int)):
            return None
        if self.wanted.value_id is not None and value_id != self.wanted.value_id:
            return None
        known = self.values.get((owner, value_id))
        return None if known is not None and known.seq >= seq else (owner, value_id)

    def result(self) -> list[Value]:
        return sorted(self.values.values(), key=lambda v: (v.owner, v.id))


class DhtNode:
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
        # A reader must be able to page through every value a key can hold.
        self._max_pages = -(-self.config.quotas.max_values_per_key // PAGE_ENTRIES) + 1
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
        self.replicator = Replicator(self)
        StockRpcs(self).register(self.endpoint)
        MeshRpcs(self).register(self.endpoint)
        self._tasks = TaskSet(self.counters)
        self.loops = Supervisor(self.counters)  # the node's own long-lived loops
        self._keepers: dict[bytes, asyncio.Task] = {}
        self._subscribed: dict[bytes, list[Contact]] = {}
        self._started = time.time()
        self.ongoing_ops = 0  # lookups in flight, reported as OpenDHT's `ops`

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
        if self.endpoint.transport is not None:
            self.endpoint.transport.close()
        self.store.close()

    @property
    def address(self) -> Address:
        return self.endpoint.address

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
        return await self._traverse(target, None)

    async def _traverse(
        self,
        target: bytes,
        collector: "_ValueCollector | None",
        quorum: int = 0,
        store: _StoreAlong | None = None,
    ) -> list[Contact]:
        self.ongoing_ops += 1
        stats = LookupStats() if self._tracer else None  # unobserved, a lookup keeps no stats
        started = time.monotonic() if stats is not None else 0.0
        try:
            return await traverse(
                target,
                self.table.closest(target),
                lambda contact: self._find(contact, target, collector, store),
                k=self.config.k,
                alpha=self.config.alpha,
                exclude=self.node_id,
                satisfied=lambda: bool(quorum) and collector is not None and collector.holders >= quorum,
                diversity=self.config.diversity,
                per_referrer=self.config.per_referrer,
                stats=stats,
            )
        finally:
            self.ongoing_ops -= 1
            if stats is not None:
                purpose = "put" if store is not None else "values" if collector is not None else "nodes"
                seconds = time.monotonic() - started
                self._tracer.lookup_done(LookupDone(target, purpose, stats.hops, stats.asked, stats.answered, seconds))

    async def _find(
        self, contact: Contact, target: bytes, collector: _ValueCollector | None, store: _StoreAlong | None
    ) -> list[Contact] | None:
        if self.admission.recently_unreachable(contact.address):
            return None
        nonce = None if self.admission.is_proven(contact.address, contact.node_id) else new_nonce()
        body: dict[str, Any] = {"t": target}
        if collector is not None:
            body |= collector.wanted.query()
        if store is not None and nonce is None:
            body |= {"s": store.wire, "ttl": store.ttl}
        try:
            reply = await self.endpoint.call(contact.address, "dm_find", body, nonce=nonce, pad=nonce is not None)
        except RpcRefused:
            return None  # alive, but unwilling: not a contact to drop
        except RpcFailure:
            self.admission.forget(contact)
            return None
        if nonce is not None and not self.admission.accept_proof(contact, nonce, reply.proof):
            return None
        if nonce is None:
            self.table.add(contact)
        payload = reply.payload if isinstance(reply.payload, dict) else {}
        if store is not None:
            verdict = payload.get("stored")
            if verdict is True:
                store.accepted.add(contact.node_id)
            elif verdict is None:
                store.unanswered.add(contact.node_id)
        nodes = payload.get("nodes")
        offered = (contact_from_wire(item) for item in (nodes if isinstance(nodes, list) else []))
        found = [c for c in offered if c is not None and reachable_via(contact.host, c.host)]
        if collector is not None:
            holds = bool(payload.get("vals") or payload.get("refs"))
            await self._collect_pages(contact, target, payload, collector)
            collector.holders += holds
        return found

    async def _collect_pages(self, contact: Contact, key: bytes, payload: dict, collector: _ValueCollector) -> None:
        for _ in range(self._max_pages):
            values, refs = payload.get("vals"), payload.get("refs")
            for raw in values if isinstance(values, list) else []:
                collector.offer(raw)
            wanted = [i for i in map(collector.wants, refs if isinstance(refs, list) else []) if i is not None]
            await asyncio.gather(*(self._fetch(contact, key, identity, collector) for identity in wanted))
            more = payload.get("more")
            if not isinstance(more, int) or isinstance(more, bool) or more <= 0:
                return
            try:
                page = {"t": key, "p": more} | collector.wanted.query()
                reply = await self.endpoint.call(contact.address, "dm_find", page)
            except RpcFailure:
                return
            payload = reply.payload if isinstance(reply.payload, dict) else {}

    async def _fetch(
        self, contact: Contact, key: bytes, identity: tuple[bytes, int], collector: _ValueCollector
    ) -> None:
        owner, value_id = identity
        try:
            reply = await self.endpoint.call(contact.address, "dm_fetch", {"k": key, "o": owner, "i": value_id})
        except RpcFailure:
            return
        collector.offer(reply.payload)

    # ---- values -------------------------------------------------------------------------------

    async def get(self, key: bytes, value_id: int | None = None, value_type: int | None = None) -> list[Value]:
        """The live values under `key` (only those with `value_id` and of `value_type`, if given:
        replicas then send just those), gathered from the closest replicas (until `get_quorum` of them
        answered) and merged by (owner, id), highest seq."""
        if value_id == 0:
            raise ValueError("value id 0 is not a value's id")
        values, _ = await self._gather(key, self.config.get_quorum, Wanted(value_id, value_type))
        return values

    async def get_stream(self, key: bytes) -> AsyncIterator[Value]:
        """The values under `key` as they arrive: this node's own first, then each value (or newer
        version of one) that the lookup finds. Ends when the lookup does."""
        found: asyncio.Queue[Value | None] = asyncio.Queue()
        collector = _ValueCollector(key, self.store.get(key), self.rules.check, on_new=found.put_nowait)
        for value in collector.result():
            yield value
        lookup = asyncio.get_running_loop().create_task(self._traverse(key, collector, self.config.get_quorum))
        lookup.add_done_callback(lambda _: found.put_nowait(None))
        self.counters.add("gets")
        try:
            while (value := await found.get()) is not None:
                yield value
        finally:
            lookup.cancel()
            await asyncio.gather(lookup, return_exceptions=True)

    async def _gather(
        self, key: bytes, quorum: int = 0, wanted: Wanted = Wanted()
    ) -> tuple[list[Value], list[Contact]]:
        collector = _ValueCollector(key, self.store.get(key, wanted.value_type), self.rules.check, wanted=wanted)
        nodes = await self._traverse(key, collector, quorum)
        self.counters.add("gets")
        return collector.result(), nodes

    def sign(self, key: bytes, value: Value) -> Value:
        return sign_value(self.identity, key, value)

    async def put_signed(self, key: bytes, value: Value, **options: Unpack[PutOptions]) -> PutResult:
        """Sign `value` as this node and put it, as OpenDHT's putSigned does: id 0 gets a random id; an
        existing id gets a seq above every version of it this node (or the mesh) holds. With an OpenDHT
        identity the signature is OpenDHT's, else dhtmesh's.

        Record types (farmer records, manifests, holdings, audit logs) are refused: the node's key is its
        farmer's and auditor's, so a record signed on request would speak for the farmer."""
        opendht_signature = self.opendht_identity is not None
        return await self._sign_and_put(key, value, opendht_signature, options)

    async def put_encrypted(
        self, key: bytes, value: Value, recipient_key: bytes, **options: Unpack[PutOptions]
    ) -> PutResult:
        """Seal `value.data` to the recipient's Ed25519 public key, sign as this node (Ed25519: the
        recipient is a dhtmesh identity), and put it."""
        try:
            sealed = seal_to(recipient_key, value.data)
        except SealedBoxError as error:
            raise InvalidValue(str(error)) from error
        encrypted = replace(value, data=sealed, to=node_id_from_public_key(recipient_key))
        return await self._sign_and_put(key, encrypted, False, options)

    async def _sign_and_put(self, key: bytes, value: Value, opendht_signature: bool, options: PutOptions) -> PutResult:
        if value.type in self.rules.signed_by_services_only:
            raise InvalidValue(f"type {value.type} is a record type, signed only by the node's own services")
        rsa = self.opendht_identity if opendht_signature else None
        owner = rsa.public_der if rsa else self.identity.public_key
        if value.id == 0:
            value = replace(value, id=new_value_id())
        else:
            versions = [v.seq for v in await self.get(key) if v.identity == (owner, value.id)]
            if versions:
                value = replace(value, seq=max(value.seq, max(versions) + 1))
        if rsa is None:
            return await self.put(key, self.sign(key, value), **options)
        if value.seq > MAX_OPENDHT_SEQ:
            raise InvalidValue("an OpenDHT-signed value's seq is a 16-bit unsigned integer")
        return await self.put(key, sign_opendht_value(rsa, value), **options)

    async def put_encrypted_opendht(
        self, key: bytes, value: Value, recipient_id: bytes, **options: Unpack[PutOptions]
    ) -> PutResult:
        """OpenDHT's putEncrypted: find the recipient's public key from the certificate it published
        under its key id, sign `value` with this node's OpenDHT identity and encrypt it to them."""
        if self.opendht_identity is None:
            raise InvalidValue("this node has no OpenDHT identity (start it with --opendht-identity)")
        recipient = await self.opendht_public_key(recipient_id)
        if recipient is None:
            raise InvalidValue(f"no OpenDHT certificate of {recipient_id.hex()} found in the mesh")
        value = replace(value, id=value.id or new_value_id())
        encrypted = encrypt_opendht_value(self.opendht_identity, recipient, value)
        return await self.put(key, encrypted, **options)

    async def publish_opendht_certificate(self) -> None:
        """Keep this node's OpenDHT certificate under its key id, so OpenDHT clients (and `/encrypt` of
        other nodes) can encrypt values to this node's OpenDHT identity."""
        if self.opendht_identity is not None:
            identity = self.opendht_identity
            await self.put(identity.key_id, certificate_value(identity), permanent=True)

    async def opendht_public_key(self, key_id: bytes) -> bytes | None:
        """The OpenDHT public key whose id is `key_id`, from the certificates published under that id."""
        for value in await self.get(key_id, value_type=CERTIFICATE_TYPE):
            try:
                public_key = certificate_public_key(value)
            except InvalidValue:
                continue  # anyone may put junk under the id: only a key with this very id counts
            if opendht.key_id(public_key) == key_id:
                return public_key
        return None

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
        along = _StoreAlong(value.to_wire(), ttl, set(), set())
        nodes = await self._traverse(key, None, store=along)
        replicas = sum(c.node_id in along.accepted for c in nodes)
        late = [c for c in nodes if c.node_id in along.unanswered]
        if late:
            replicas += sum(await asyncio.gather(*(self.store_on(contact, key, value, ttl) for contact in late)))
        return PutResult(value, replicas, len(nodes))

    async def store_on(self, contact: Contact, key: bytes, value: Value, ttl: float, by: bytes | None = None) -> bool:
        """Ask one node to hold `value`; `by`, on a hand-off or repair, names the peer that stored it
        with us (or us), so that its refreshes keep counting on the new replica too."""
        body: dict[str, Any] = {"k": key, "v": value.to_wire(), "ttl": ttl}
        if by:
            body["by"] = by
        try:
            reply = await self.endpoint.call(contact.address, "dm_store", body)
        except RpcRefused:
            return False
        except RpcFailure:
            self.admission.forget(contact)
            return False
        return isinstance(reply.payload, dict) and reply.payload.get("stored") is True

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

    def _on_new_value(self, key: bytes, value: Value) -> None:
        self.hub.emit(key, value)
        self._push(key, value, expired=False)

    def _push(self, key: bytes, value: Value, *, expired: bool) -> None:
        for address, _ in self.hub.subscribers_of(key):
            self._tasks.spawn(self._notify(address, key, value, expired))

    async def _notify(self, address: Address, key: bytes, value: Value, expired: bool) -> None:
        try:
            reply = await self.endpoint.call(address, "dm_notify", {"k": key, "v": value.to_wire(), "x": expired})
            listening = reply.payload is True
        except RpcFailure:
            listening = False
        if not listening:
            self.hub.unsubscribe(key, address)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            self.expire_values()
            self.hub.purge_expired()

    def expire_values(self, now: float | None = None) -> int:
        """Drop values whose time is up, and tell local listeners and subscribers they expired."""
        expired = self.store.expire(now)
        for key, value in expired:
            self.hub.emit(key, value, expired=True)
            self._push(key, value, expired=True)
        return len(expired)

    # ---- listening ----------------------------------------------------------------------------

    def held(self, key: bytes) -> list[Value]:
        """This node's own copies of the values under `key` (every one passes the rules: see
        `_migrate_store`)."""
        return self.store.get(key)

    def listen(self, key: bytes, *, capped: bool = True) -> Listener:
        """Events for every new, updated and expired value under `key`, from anywhere in the mesh.
        Raises `ListenRefused` when this node already listens to `max_listened_keys` other keys; the
        node's own services (a fixed, small set of keys) pass `capped=False`, so that clients filling
        the cap cannot stop them."""
        if capped and not self.hub.is_listening(key) and len(self._keepers) >= self.config.max_listened_keys:
            self.counters.add("listens_refused")
            raise ListenRefused(f"this node listens to {self.config.max_listened_keys} keys already")
        listener, first = self.hub.open(key)
        for value in self.held(key):
            self.hub.emit(key, value)
        if first:
            self._keepers[key] = self.loops.start("listen", lambda: self._keep_listening(key), key.hex())
        return listener

    def _stop_listening(self, key: bytes) -> None:
        """The last local listener on `key` left: stop refreshing, and tell the replicas."""
        keeper = self._keepers.pop(key, None)
        if keeper is not None:
            keeper.cancel()
        for contact in self._subscribed.pop(key, []):
            self._tasks.spawn(self._unsubscribe(contact, key))

    async def _keep_listening(self, key: bytes) -> None:
        while True:
            values, nodes = await self._gather(key)
            for value in values:
                self.hub.emit(key, value)
            self._subscribed[key] = nodes[: self.config.listen_fanout]
            await asyncio.gather(*(self._subscribe(contact, key) for contact in self._subscribed[key]))
            await asyncio.sleep(self.config.subscription_ttl / 3)

    def subscribed_to(self, key: bytes, address: Address, node_id: bytes | None) -> bool:
        """Whether the peer at `address` is a replica this node subscribed to for `key`."""
        return any(c.address == address and c.node_id == node_id for c in self._subscribed.get(key, []))

    async def _subscribe(self, contact: Contact, key: bytes) -> bool:
        # A replica that has not proven us yet (our find made it challenge us) refuses as unproven: the
        # endpoint retries for a moment.
        try:
            await self.endpoint.call(contact.address, "dm_sub", {"k": key, "ttl": self.config.subscription_ttl})
        except RpcFailure:
            return False
        return True

    async def _unsubscribe(self, contact: Contact, key: bytes) -> None:
        try:
            await self.endpoint.call(contact.address, "dm_unsub", {"k": key})
        except RpcFailure:
            pass

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
            "ops": self.ongoing_ops,
            "address": format_host_port(*self.address),
            "listeners": self.hub.listener_count(),
            "subscribers": self.hub.subscription_count(),
            "started": self._started,
            **self.store.counts(),
            "counters": self.counters.snapshot(),
        }
