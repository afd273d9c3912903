"""`Accounts`: the mesh's user accounts as a node's service: creating one from its signed record, a
login (`issue`: the password checked against the account record by Argon2id, a JWT signed with the
derived key) and checking a token (`verify`, against the account record, on any node).

Costs are bounded before any work: Argon2id runs in a thread, at most `DERIVATIONS` at once (more is
refused, not queued: `Full`, a 429), one at a time per client host, and a login costs its host's
budget in proportion to the limits the record states (a record at the most costly limits: 8 logins);
account records are cached `ACCOUNT_TTL` seconds (an unknown name too) and verified tokens until their
`exp`, both in bounded LRU maps; DHT lookups (cache misses) have a node-wide budget as well as the
per-host one, since one host may have many addresses. The per-host budgets (`HostLimits`) are the
proxy's to apply, since only it knows the caller's host; they live here so that every route shares one
set per node. An account created through the node is re-announced by it as its client host's permanent
put, within the node's quotas.

A name whose replicas hold records of more than one key (two claims that raced onto different
replicas, or a hostile node answering with its own) is counted as `accounts_contested`. The key this
node saw holding the name alone before wins (it pins it, `PIN_TTL`); else the claim held by more
replicas than all the others together (replicas keep the first claim they hear of, so the real one is
held by the many, a hostile node's by itself: the honest majority of a key's replicas the DHT rests on
anyway); else the name is treated as unknown. No login can then be taken over by whichever claim a
lookup happens to see, and a hostile node's claim locks nobody out.
"""

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dhtmesh.node.accounts.cache import Expiring
from dhtmesh.node.accounts.errors import AccountExists, BadAccount, BadLogin, BadToken
from dhtmesh.node.accounts.tokens import MAX_LIFETIME, claimed, mint, verified
from dhtmesh.node.dht import DhtNode, PutRefused
from dhtmesh.node.records.account import (
    ACCOUNT_EXPIRY,
    ACCOUNT_TYPE,
    MEMLIMIT,
    OPSLIMIT,
    AccountRecord,
    account_key,
    decode_account,
    find_account,
    identity_for,
    valid_name,
)
from dhtmesh.node.records.kind import value_id_of
from dhtmesh.node.records.rules import check_value
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.value import InvalidValue, Value
from dhtmesh.node.wire.ratelimit import Buckets, Full, Slots, TokenBucket

__all__ = ["Accounts", "HostLimits", "Issued"]

ACCOUNT_TTL = 60.0  # seconds an account record (or its absence) is trusted without a new lookup
MAX_ACCOUNTS = 4096
MAX_TOKENS = 65536
MAX_PINS = 65536  # names and their keys: about 150 bytes each
PIN_TTL = ACCOUNT_EXPIRY  # a name's key is kept as long as its record lives unrefreshed
DERIVATIONS = 2  # Argon2id runs at once (64 MiB each by default, 256 MiB at most), one per client host
LOOKUP_RATE, LOOKUP_BURST = 20.0, 100.0  # DHT lookups of accounts per second, for all hosts together
LOGIN_FAILED = "Incorrect username or password"


@dataclass(frozen=True)
class Issued:
    token: str
    expires: float  # unix seconds


@dataclass(frozen=True, slots=True)
class Looked:
    """What a lookup found for a name: its account, or None (cached too: an unknown name costs one
    lookup per `ACCOUNT_TTL`, not one per request)."""

    record: AccountRecord | None


@dataclass(frozen=True, slots=True)
class Claim:
    """An account record for a name, as a lookup found it: its signed value and how many replicas hold it."""

    value: Value
    record: AccountRecord
    holders: int


@dataclass
class HostLimits:
    """What one client host may cost, per second with a burst: logins (an Argon2id each), tokens not yet
    verified on this node (a DHT lookup for an unknown user), and account creations."""

    logins: Buckets = field(default_factory=lambda: Buckets(rate=1.0, burst=10))
    lookups: Buckets = field(default_factory=lambda: Buckets(rate=5.0, burst=20))
    creations: Buckets = field(default_factory=lambda: Buckets(rate=0.2, burst=5))


class Accounts:
    def __init__(self, node: DhtNode, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.limits = HostLimits()
        self._clock = clock
        self._accounts: Expiring[str, Looked] = Expiring(MAX_ACCOUNTS, clock)
        self._tokens: Expiring[bytes, str] = Expiring(MAX_TOKENS, clock)  # by the token's hash: tokens are long
        self._pins: Expiring[str, bytes] = Expiring(MAX_PINS, clock)  # name -> the one key seen holding it
        self._derivations = Slots("password derivations", DERIVATIONS, 1)
        self._lookups = TokenBucket(LOOKUP_RATE, LOOKUP_BURST)

    # ---- tokens ---------------------------------------------------------------------------------

    def known(self, token: str) -> bool:
        """Whether `token` was verified on this node and has not expired: `verify` then costs nothing."""
        return _digest(token) in self._tokens

    async def verify(self, token: str) -> str:
        """The user `token` is for; raises `BadToken` with the reason."""
        name = self._tokens.get(_digest(token))
        if name is not None:
            return name
        name = claimed(token)
        record = await self.account(name)
        if record is None:
            raise BadToken("unknown user")
        claims = verified(token, record.public_key, self._clock())
        self._tokens.put(_digest(token), name, claims.exp)
        return name

    async def issue(self, name: str, password: str, lifetime: float | None = None, host: str = "") -> Issued:
        """A token for `name` if `password` is its account's; raises `BadLogin`, or `Full` when as many
        logins as the node allows are being checked, or `host` has spent its login budget (the proxy took
        one login; a record with costlier limits costs more)."""
        record = await self.account(name) if valid_name(name) else None
        if record is None:
            raise BadLogin(LOGIN_FAILED)
        if not self.limits.logins.take(host, _weight(record) - 1):
            raise Full("logins", "address")
        with self._derivations.held(host):
            identity = await asyncio.to_thread(identity_for, record, password)
        if identity.public_key != record.public_key:
            self.node.counters.add("logins_refused")
            raise BadLogin(LOGIN_FAILED)
        token, expires = mint(identity, name, self._clock(), MAX_LIFETIME if lifetime is None else lifetime)
        self._tokens.put(_digest(token), name, expires)
        self.node.counters.add("logins")
        return Issued(token, expires)

    # ---- accounts -------------------------------------------------------------------------------

    async def account(self, name: str) -> AccountRecord | None:
        """The account of `name` as the mesh holds it (cached `ACCOUNT_TTL` seconds); None if there is
        none, or if its replicas' claims leave it undecided (`_chosen`)."""
        cached = self._accounts.get(name)
        if cached is not None:
            return cached.record
        record = self._chosen(name, await self._claims(name))
        self._accounts.put(name, Looked(record), self._clock() + ACCOUNT_TTL)
        return record

    def _chosen(self, name: str, claims: list[Claim]) -> AccountRecord | None:
        """The one claim to `name`; of several, the one whose key this node pinned, else the one held by
        a majority of the replicas that hold any, else none."""
        if len(claims) == 1:
            self._pins.put(name, claims[0].record.public_key, self._clock() + PIN_TTL)
            return claims[0].record
        if not claims:
            return None
        self.node.counters.add("accounts_contested")
        pinned = self._pins.get(name)
        ranked = sorted(claims, key=lambda claim: (claim.record.public_key != pinned, -claim.holders))
        if ranked[0].record.public_key == pinned or ranked[0].holders > sum(claim.holders for claim in ranked[1:]):
            return ranked[0].record
        return None

    async def record(self, name: str) -> Value | None:
        """The account's signed record as the mesh holds it (public: name, key, salt, limits), if there is
        one claim to the name that stands (`_chosen`): what a client derives its key against to publish it again."""
        claims = await self._claims(name) if valid_name(name) else []
        chosen = self._chosen(name, claims)
        return next((claim.value for claim in claims if claim.record == chosen), None)

    async def _claims(self, name: str) -> list[Claim]:
        """The claims to `name` the mesh holds: one per key (replicas merge values by owner)."""
        if not self._lookups.take(time.monotonic()):
            raise Full("account lookups", "total")
        key = account_key(name)
        held = await self.node.get_held(key, value_id_of(key), ACCOUNT_TYPE)
        return [Claim(value, record, holders) for value, holders in held for _, record in find_account([value], name)]

    async def create(self, name: str, signed: Value, client: str) -> AccountRecord:
        """Publish the account `signed` states (signed by its own key), and keep announcing it as a
        permanent put of `client` (the host that asked: within the node's quotas); the same record
        again re-publishes it. Raises `BadAccount`, `AccountExists` if another key holds the name, or
        `PutRefused` (no quota left)."""
        record = _checked(name, signed)
        claims = await self._claims(name)
        held = self._chosen(name, claims)
        if any(claim.record.public_key != record.public_key for claim in claims) and held != record:
            raise AccountExists(f"the name {name} is taken")
        try:
            await self.node.put(account_key(name), signed, permanent=True, client=client)
        except PutRefused as refused:
            if refused.verdict in (Verdict.REFUSE_ID_TAKEN, Verdict.REFUSE_NOT_SUCCESSOR):
                raise AccountExists(f"the name {name} is taken") from refused
            raise
        self._accounts.pop(name)
        self._pins.put(name, record.public_key, self._clock() + PIN_TTL)
        self.node.counters.add("accounts_created")
        return record

    async def close(self) -> None:
        return None


def _weight(record: AccountRecord) -> float:
    """What a login against `record` costs, in logins at the default limits (Argon2id's time grows with
    both its passes and its memory)."""
    return (record.opslimit / OPSLIMIT) * (record.memlimit / MEMLIMIT)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()  # a query may carry any text


def _checked(name: str, signed: Value) -> AccountRecord:
    """The account record `signed` states, if it passes every hop's rules and is `name`'s."""
    if signed.type != ACCOUNT_TYPE:
        raise BadAccount("the body is no account record")
    try:
        record = decode_account(signed.data)
        check_value(account_key(record.name), signed)
    except InvalidValue as error:
        raise BadAccount(f"account record: {error}") from error
    if record.name != name:
        raise BadAccount("the account record is another name's")
    return record
