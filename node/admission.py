"""Who may enter the routing table: a peer proves that its id is the hash of its key, from its address.

Any dhtmesh request may carry a fresh nonce; the reply then carries `[public_key, signature]` over it.
The nonce travelled to the peer's address, so a valid proof shows both that the id is
`SHA-1(public_key)` and that the address is really the peer's (no spoofing). Until then a peer is
answered but never routed through and never sent data (flaws F9, F10). A request from an unproven
sender makes us challenge it in the background, whether or not its id would enter the routing table
(a store needs its sender proven). Challenges are bounded in all (`max_challenges`), per host and per
subnet, and each has a short deadline: addresses that never answer (100 a second from one host) can
hold one slot, not starve every newcomer of the others.
"""

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key, verify_signature
from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.routing.table import RoutingTable
from dhtmesh.node.stats import Counters
from dhtmesh.node.tasks import TaskSet
from dhtmesh.node.wire.endpoint import Endpoint, RpcFailure, new_nonce
from dhtmesh.node.wire.netgroup import host_of, subnet_of
from dhtmesh.node.wire.ratelimit import Address

log = logging.getLogger(__name__)

PROOF_DOMAIN = b"dhtmesh/node-proof/v1"
MAX_REMEMBERED = 65536
UNREACHABLE_FOR = 60.0  # a contact that failed a call is skipped by lookups for this long
FIRST_PROBE = 5.0  # then it is probed again, backing off, so that a healed partition re-merges
MAX_PROBE_INTERVAL = 300.0
GIVE_UP_AFTER = 3600.0
CHALLENGES_PER_HOST = 1
CHALLENGES_PER_SUBNET = 4
CHALLENGE_DEADLINE = 1.0  # a peer that just sent us a request answers a hello at once, or not at all


@dataclass(slots=True)
class _Failure:
    failed_at: float
    next_probe: float
    interval: float = FIRST_PROBE


def proof_message(nonce: bytes) -> bytes:
    return PROOF_DOMAIN + nonce


class Admission:
    def __init__(
        self,
        identity: Identity,
        endpoint: Endpoint,
        table: RoutingTable,
        counters: Counters,
        on_admitted: Callable[[Contact], None],
        max_challenges: int = 32,
    ) -> None:
        self._identity = identity
        self._endpoint = endpoint
        self._table = table
        self._counters = counters
        self._on_admitted = on_admitted
        self._proven: OrderedDict[Address, bytes] = OrderedDict()
        self._challenging: set[Address] = set()
        self._challenging_hosts: Counter[str] = Counter()
        self._challenging_subnets: Counter[str] = Counter()
        self._unreachable: OrderedDict[Address, _Failure] = OrderedDict()
        self._tasks = TaskSet(limit=max_challenges)

    def prove(self, nonce: bytes) -> list:
        return [self._identity.public_key, self._identity.sign(proof_message(nonce))]

    def is_proven(self, address: Address, node_id: bytes) -> bool:
        return self._proven.get(address) == node_id

    def is_proven_address(self, address: Address) -> bool:
        return address in self._proven

    def accept_proof(self, contact: Contact, nonce: bytes, proof: Any) -> bool:
        """Check a proof that answered our `nonce`; on success the contact is admitted."""
        if not (isinstance(proof, list) and len(proof) == 2 and all(isinstance(p, bytes) for p in proof)):
            self._counters.add("bad_proofs")
            return False
        public_key, signature = proof
        if node_id_from_public_key(public_key) != contact.node_id or not verify_signature(
            public_key, proof_message(nonce), signature
        ):
            self._counters.add("bad_proofs")
            return False
        self.admit(contact)
        return True

    def admit(self, contact: Contact) -> None:
        if contact.node_id == self._identity.node_id:
            return
        self._unreachable.pop(contact.address, None)
        self._proven[contact.address] = contact.node_id
        self._proven.move_to_end(contact.address)
        while len(self._proven) > MAX_REMEMBERED:
            self._proven.popitem(last=False)
        was_known = contact.node_id in self._table
        if self._table.add(contact) and not was_known:
            self._on_admitted(contact)

    def forget(self, contact: Contact) -> None:
        """A contact stopped answering: drop it, and let lookups skip it for a while, since other nodes
        will keep offering it until they notice too."""
        if self._proven.get(contact.address) == contact.node_id:
            del self._proven[contact.address]
        self._table.remove(contact.node_id)
        if contact.address not in self._unreachable:
            now = time.monotonic()
            self._unreachable[contact.address] = _Failure(now, now + FIRST_PROBE)
            while len(self._unreachable) > MAX_REMEMBERED:
                self._unreachable.popitem(last=False)

    def recently_unreachable(self, address: Address) -> bool:
        failure = self._unreachable.get(address)
        return failure is not None and time.monotonic() - failure.failed_at < UNREACHABLE_FOR

    async def probe_unreachable(self, limit: int = 8) -> int:
        """Say hello again to a few addresses that failed, when their (backed-off) turn has come; those
        that answer are admitted again. Returns how many came back."""
        now = time.monotonic()
        for address in [a for a, f in self._unreachable.items() if now - f.failed_at > GIVE_UP_AFTER]:
            del self._unreachable[address]
        due = [a for a, f in self._unreachable.items() if f.next_probe <= now][:limit]
        for address in due:
            failure = self._unreachable[address]
            failure.interval = min(MAX_PROBE_INTERVAL, failure.interval * 2)
            failure.next_probe = now + failure.interval
        revived = [c for c in await asyncio.gather(*(self.challenge(a) for a in due)) if c is not None]
        return len(revived)

    def consider(self, address: Address, claimed_id: bytes) -> None:
        """A request came from `address` claiming `claimed_id`: refresh it, or challenge it if unproven."""
        if self.is_proven(address, claimed_id):
            self._table.note_request(Contact(claimed_id, *address))
            return
        if claimed_id == self._identity.node_id or address in self._challenging:
            return
        host, subnet = host_of(address[0]), subnet_of(address[0])
        if (
            self._challenging_hosts[host] >= CHALLENGES_PER_HOST
            or self._challenging_subnets[subnet] >= CHALLENGES_PER_SUBNET
            or self._tasks.spawn(self._challenge(Contact(claimed_id, *address))) is None
        ):
            self._counters.add("challenges_skipped")
            return
        self._challenging.add(address)
        self._challenging_hosts[host] += 1
        self._challenging_subnets[subnet] += 1

    async def challenge(self, address: Address) -> Contact | None:
        """Say hello to an address whose id we do not know yet (a bootstrap peer); admit it if it proves."""
        nonce = new_nonce()
        try:
            reply = await self._endpoint.call(address, "dm_hello", {}, nonce=nonce)
        except RpcFailure:
            return None
        payload = reply.payload if isinstance(reply.payload, dict) else {}
        node_id = payload.get("id")
        if not (isinstance(node_id, bytes) and len(node_id) == 20):
            return None
        contact = Contact(node_id, *address)
        return contact if self.accept_proof(contact, nonce, reply.proof) else None

    async def _challenge(self, contact: Contact) -> None:
        try:
            async with asyncio.timeout(CHALLENGE_DEADLINE):
                proven = await self.challenge(contact.address)
        except TimeoutError:
            proven = None
        finally:
            self._challenging.discard(contact.address)
            host, subnet = host_of(contact.host), subnet_of(contact.host)
            self._challenging_hosts[host] -= 1
            self._challenging_subnets[subnet] -= 1
            if not self._challenging_hosts[host]:
                del self._challenging_hosts[host]
            if not self._challenging_subnets[subnet]:
                del self._challenging_subnets[subnet]
        if proven is None or proven.node_id != contact.node_id:
            self._counters.add("challenges_failed")

    async def close(self) -> None:
        await self._tasks.close()
