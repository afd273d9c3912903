"""Who may enter the routing table: a peer proves that its id is the hash of its key, from its address.

Any dhtmesh request may carry a fresh nonce; the reply then carries `[public_key, signature]` over it.
The nonce travelled to the peer's address, so a valid proof shows both that the id is
`SHA-1(public_key)` and that the address is really the peer's (no spoofing). Until then a peer is
answered but never routed through and never sent data (flaws F9, F10).

A request from an unproven sender makes us challenge it, whether or not its id would enter the routing
table (a store needs its sender proven). That challenge is stateless, like a SYN cookie: the hello's
message id and nonce are an HMAC of the address and the time period, so a node keeps nothing per
challenge, and addresses that never answer (spoofed, or silent on purpose) hold nothing that an honest
newcomer's challenge would wait for. The reply is recognised by its message id and checked like any
proof. Hellos sent this way are unpadded (their reply fits a few times their size) and rate-limited
per host and in all: a spoofed request cannot make us send a victim more than a small hello, now and
then.
"""

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key, verify_signature
from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.routing.table import RoutingTable
from dhtmesh.node.rpcs import hello
from dhtmesh.node.stats import Counters
from dhtmesh.node.wire.codec import MESSAGE_ID_SIZE
from dhtmesh.node.wire.endpoint import NONCE_SIZE, Endpoint, RpcFailure, new_nonce
from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Address, RequestLimiter

log = logging.getLogger(__name__)

PROOF_DOMAIN = b"dhtmesh/node-proof/v1"
MAX_REMEMBERED = 65536
# Proven addresses remembered per host: a few nodes' worth. A host that proves address after address
# (one IPv6 /64 has plenty) only pushes its own out, never other hosts' peers.
MAX_PROVEN_PER_HOST = 256
UNREACHABLE_FOR = 60.0  # a contact that failed a call is skipped by lookups for this long
FIRST_PROBE = 5.0  # then it is probed again, backing off, so that a healed partition re-merges
MAX_PROBE_INTERVAL = 300.0
GIVE_UP_AFTER = 3600.0
COOKIE_PERIOD = 10.0  # a challenge's reply is taken within one to two periods of its sending
# Hellos a node sends to prove its askers: a host that keeps asking (or is spoofed) gets ten a second
# (a few nodes behind one address all prove themselves within a second or two); one claimed id at one
# address is challenged once a second at most.
CHALLENGES_PER_HOST = 10.0
CHALLENGES_IN_ALL = 512.0
CHALLENGE_AGAIN_AFTER = 1.0
MAX_CHALLENGED = 4096


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
    ) -> None:
        self._identity = identity
        self._endpoint = endpoint
        self._table = table
        self._counters = counters
        self._on_admitted = on_admitted
        self._proven: OrderedDict[Address, bytes] = OrderedDict()
        self._proven_by_host: dict[str, OrderedDict[Address, None]] = {}
        self._unreachable: OrderedDict[Address, _Failure] = OrderedDict()
        self._secret = os.urandom(32)  # a new one each start: cookies never outlive the process
        self._challenges = RequestLimiter(CHALLENGES_IN_ALL, CHALLENGES_PER_HOST)
        self._challenged: OrderedDict[tuple[Address, bytes], float] = OrderedDict()  # when, latest last

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
        self._remember(contact.address, contact.node_id)
        was_known = contact.node_id in self._table
        if self._table.add(contact) and not was_known:
            self._on_admitted(contact)

    def forget(self, contact: Contact) -> None:
        """A contact stopped answering: drop it, and let lookups skip it for a while, since other nodes
        will keep offering it until they notice too."""
        if self._proven.get(contact.address) == contact.node_id:
            self._unremember(contact.address)
        self._table.remove(contact.node_id)
        if contact.address not in self._unreachable:
            now = time.monotonic()
            self._unreachable[contact.address] = _Failure(now, now + FIRST_PROBE)
            while len(self._unreachable) > MAX_REMEMBERED:
                self._unreachable.popitem(last=False)

    def _remember(self, address: Address, node_id: bytes) -> None:
        """A proven address, latest last: at most `MAX_PROVEN_PER_HOST` per host and `MAX_REMEMBERED` in
        all, the least recent going first."""
        self._proven[address] = node_id
        self._proven.move_to_end(address)
        host = self._proven_by_host.setdefault(host_of(address[0]), OrderedDict())
        host[address] = None
        host.move_to_end(address)
        if len(host) > MAX_PROVEN_PER_HOST:
            self._unremember(next(iter(host)))
        while len(self._proven) > MAX_REMEMBERED:
            self._unremember(next(iter(self._proven)))

    def _unremember(self, address: Address) -> None:
        self._proven.pop(address, None)
        host = host_of(address[0])
        addresses = self._proven_by_host.get(host)
        if addresses is not None:
            addresses.pop(address, None)
            if not addresses:
                del self._proven_by_host[host]

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
        if claimed_id == self._identity.node_id or self._challenged_lately((address, claimed_id)):
            return
        if not self._challenges.allow(address):
            self._counters.add("challenges_skipped")
            return
        message_id, nonce = self._cookie(address, self._period())
        self._endpoint.send_request(address, hello.NAME, hello.hello_request(nonce), message_id)
        self._counters.add("challenges_sent")

    def _challenged_lately(self, claim: tuple[Address, bytes]) -> bool:
        """Whether this claim was challenged within `CHALLENGE_AGAIN_AFTER` (a bounded memory: a flood
        of claims only pushes the oldest out, so at worst a claim is challenged again)."""
        now = time.monotonic()
        last = self._challenged.get(claim)
        if last is not None and now - last < CHALLENGE_AGAIN_AFTER:
            return True
        self._challenged[claim] = now
        self._challenged.move_to_end(claim)
        while len(self._challenged) > MAX_CHALLENGED:
            self._challenged.popitem(last=False)
        return False

    def _period(self) -> int:
        return int(time.monotonic() // COOKIE_PERIOD)

    def _cookie(self, address: Address, period: int) -> tuple[bytes, bytes]:
        """The message id and nonce of a stateless challenge to `address` in `period`."""
        material = f"{address[0]}|{address[1]}|{period}".encode()
        digest = hmac.new(self._secret, material, hashlib.sha512).digest()
        return digest[:MESSAGE_ID_SIZE], digest[MESSAGE_ID_SIZE : MESSAGE_ID_SIZE + NONCE_SIZE]

    def cookie_nonce(self, message_id: bytes, address: Address) -> bytes | None:
        """The nonce of the stateless challenge that `message_id`, from `address`, answers; None if it
        answers none (the endpoint drops it then, undecoded)."""
        now = self._period()
        for period in (now, now - 1):
            expected, nonce = self._cookie(address, period)
            if hmac.compare_digest(expected, message_id):
                return nonce
        return None

    def take_cookie_reply(self, address: Address, nonce: bytes, envelope: Any) -> None:
        """The reply to a stateless challenge: admit the peer if it proves the id it names."""
        reply = hello.HelloReply.from_wire(envelope.get("ok") if isinstance(envelope, dict) else None)
        proof = envelope.get("pf") if isinstance(envelope, dict) else None
        if reply is None or not self.accept_proof(Contact(reply.node_id, *address), nonce, proof):
            self._counters.add("challenges_failed")

    async def challenge(self, address: Address) -> Contact | None:
        """Say hello to an address whose id we do not know yet (a bootstrap peer); admit it if it proves."""
        nonce = new_nonce()
        try:
            reply, proof = await hello.call_hello(self._endpoint, address, nonce)
        except RpcFailure:
            return None
        if reply is None:
            return None
        contact = Contact(reply.node_id, *address)
        return contact if self.accept_proof(contact, nonce, proof) else None
