"""Who asks, on the job routes: the owner of a job is an Ed25519 identity, proven in one of two ways.

- `Authorization: Ed25519 ...` with `Date`: the request signed as farmer requests are
  (`crypto/request_auth.py`), fresh and new, by the caller's key; the node learns who asks, not the key,
  so a change carries the records the caller signed.
- `Authorization: Basic base64(<identity file JSON> ":" <password>)`, dcp-rest's form: the node unlocks
  the identity (Argon2id, in a thread) and signs for the caller. This hands the key to the node: use it
  with your own node. Unlocking is costly by design, so it is rate-limited per host and in all, and an
  unlocked credential is kept (by its hash) for `KEPT_SECONDS`, bounded, so a client's next request costs
  nothing.

Every failure is a `RequestAuthError`: 401 `{"err"}`.
"""

import asyncio
import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from dhtmesh.crypto.identity import Identity, IdentityError, identity_from_text, is_sealed
from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.crypto.request_auth import RequestAuthError, parse_authorization, verify_request
from dhtmesh.node.wire.ratelimit import RequestLimiter
from dhtmesh.proxy.clients import client_of
from dhtmesh.proxy.errors import TooManyRequests
from dhtmesh.proxy.route import NODE, REPLAY_GUARD, SIGNED_LIMITER

KEPT_SECONDS = 300.0
KEPT = 64
UNLOCKS_TOTAL = 4.0  # Argon2id unlocks per second, of anyone: each costs ~0.1 s of a core and 64 MiB
UNLOCKS_PER_CLIENT = 2.0
MAX_CREDENTIAL = 16 * 1024


@dataclass(frozen=True, slots=True)
class Caller:
    owner_id: bytes
    identity: Identity | None  # the caller's key, when the node unlocked it (Basic)


class Unlocker:
    """Basic credentials unlocked lately, and the budget for unlocking more."""

    def __init__(self) -> None:
        self._kept: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._limiter = RequestLimiter(UNLOCKS_TOTAL, UNLOCKS_PER_CLIENT)

    async def unlock(self, credential: str, client: str) -> Identity:
        digest = hashlib.sha256(credential.encode()).digest()
        now = time.monotonic()
        kept = self._kept.get(digest)
        if kept is not None and now - kept[0] < KEPT_SECONDS:
            return kept[1]
        document, password = _parts(credential)
        if is_sealed(document):  # only Argon2id costs: a plain identity is read at once
            if not self._limiter.allow_host(client):
                raise TooManyRequests("too many identities to unlock; retry in a second")
            identity = await asyncio.to_thread(_unlock, document, password)
        else:
            identity = _unlock(document, password)
        self._kept[digest] = (now, identity)
        while len(self._kept) > KEPT:
            self._kept.popitem(last=False)
        return identity


UNLOCKER = web.AppKey("unlocker", Unlocker)


def _parts(credential: str) -> tuple[str, str]:
    """The identity document and the password a Basic credential holds."""
    try:
        text = base64.b64decode(credential, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as error:
        raise RequestAuthError("Basic credentials are base64 of '<identity JSON>:<password>'") from error
    document, colon, password = text.rpartition(":")  # dcp-rest splits at the last colon too
    if not colon:
        raise RequestAuthError("Basic credentials are base64 of '<identity JSON>:<password>'")
    return document, password


def _unlock(document: str, password: str) -> Identity:
    try:
        return identity_from_text(document, password or None)
    except IdentityError as error:
        raise RequestAuthError(f"invalid identity or password: {error}") from error


Proof = Callable[[bytes], Caller]
"""What proves the caller once the body is read (an Ed25519 signature covers it)."""


async def caller(request: web.Request) -> Proof:
    """Check the request's credential before its body is read: a Basic identity is unlocked, an Ed25519
    header parsed; raises `RequestAuthError` (401) for a missing or bad one. The proof it gives checks
    the signature over the body, once read."""
    if not request.app[SIGNED_LIMITER].allow_host(client_of(request)):
        raise TooManyRequests("too many authenticated requests; retry in a second")
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme == "Ed25519":
        parse_authorization(header)  # a malformed one is refused before the body is waited for
        node, guard = request.app[NODE], request.app[REPLAY_GUARD]

        def signed(body: bytes) -> Caller:
            key = verify_request(request.headers, request.method, request.raw_path, body, node.node_id, guard)
            return Caller(node_id_from_public_key(key), None)

        return signed
    if scheme == "Basic" and 0 < len(credential) <= MAX_CREDENTIAL:
        identity = await request.app[UNLOCKER].unlock(credential.strip(), client_of(request))
        return lambda _body: Caller(identity.node_id, identity)
    raise RequestAuthError("Authentication method not provided: use 'Ed25519 ...' (a signed request) or 'Basic ...'")
