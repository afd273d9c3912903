"""`Accounts`: the mesh's user accounts as a node's service: creating one from its signed record, a
login (`issue`: the password checked against the account record by Argon2id, a JWT signed with the
derived key) and checking a token (`verify`, against the account record, on any node).

Costs are bounded before any work: Argon2id runs in a thread, at most `DERIVATIONS` at once (more is
refused, not queued: `Full`, a 429); account records are cached `ACCOUNT_TTL` seconds (an unknown name
too) and verified tokens until their `exp`, both in bounded LRU maps. The per-host budgets
(`HostLimits`) are the proxy's to apply, since only it knows the caller's host; they live here so that
every route shares one set per node.

A name whose replicas hold records of more than one key (two claims that raced onto different
replicas) is treated as unknown, counted as `accounts_contested`: no login can then be taken over by
whichever claim a lookup happens to see.
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
    ACCOUNT_TYPE,
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
from dhtmesh.node.wire.ratelimit import Buckets, Slots

__all__ = ["Accounts", "HostLimits", "Issued"]

ACCOUNT_TTL = 60.0  # seconds an account record (or its absence) is trusted without a new lookup
MAX_ACCOUNTS = 4096
MAX_TOKENS = 65536
DERIVATIONS = 2  # Argon2id runs at once (64 MiB each by default, 256 MiB at most)
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
        self._derivations = Slots("password derivations", DERIVATIONS, DERIVATIONS)

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

    async def issue(self, name: str, password: str, lifetime: float | None = None) -> Issued:
        """A token for `name` if `password` is its account's; raises `BadLogin`, or `Full` when as many
        logins as the node allows are being checked."""
        record = await self.account(name) if valid_name(name) else None
        if record is None:
            raise BadLogin(LOGIN_FAILED)
        with self._derivations.held(""):
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
        none, or if its replicas hold more than one key's claim."""
        cached = self._accounts.get(name)
        if cached is not None:
            return cached.record
        records = {record for _, record in await self._claims(name)}
        if len(records) > 1:
            self.node.counters.add("accounts_contested")
        record = records.pop() if len(records) == 1 else None
        self._accounts.put(name, Looked(record), self._clock() + ACCOUNT_TTL)
        return record

    async def record(self, name: str) -> Value | None:
        """The account's signed record as the mesh holds it (public: name, key, salt, limits), if there is
        exactly one claim to the name: what a client derives its key against to publish it again."""
        claims = await self._claims(name) if valid_name(name) else []
        return claims[0][0] if len({record for _, record in claims}) == 1 else None

    async def _claims(self, name: str) -> list[tuple[Value, AccountRecord]]:
        key = account_key(name)
        return find_account(await self.node.get(key, value_id_of(key), ACCOUNT_TYPE), name)

    async def create(self, name: str, signed: Value) -> AccountRecord:
        """Publish the account `signed` states (signed by its own key), and keep announcing it; the
        same record again re-publishes it. Raises `BadAccount`, or `AccountExists` if another key
        holds the name."""
        record = _checked(name, signed)
        if any(held.public_key != record.public_key for _, held in await self._claims(name)):
            raise AccountExists(f"the name {name} is taken")
        try:
            await self.node.put(account_key(name), signed, permanent=True)
        except PutRefused as refused:
            if refused.verdict in (Verdict.REFUSE_ID_TAKEN, Verdict.REFUSE_NOT_SUCCESSOR):
                raise AccountExists(f"the name {name} is taken") from refused
            raise
        self._accounts.pop(name)
        self.node.counters.add("accounts_created")
        return record

    async def close(self) -> None:
        return None


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
