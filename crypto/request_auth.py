"""Signed HTTP requests: a farmer proves that it, and nobody replaying it, asks for a change.

dataserv signed only "<server address> <Date>", so a captured header pair could be replayed against any
route for 20 s. Here the signature binds the method, the path, a hash of the body, the node that is
asked (its node id), the time and a random nonce; a node accepts a request within `AUTH_WINDOW`
seconds of its own clock, once. (Ed25519 is deterministic and a Date has whole seconds: without the
nonce, two identical requests in one second would carry one signature, and the second would be taken
for a replay.) Headers:

    Date: <RFC 2822 date, as email.utils.formatdate writes it>
    Authorization: Ed25519 <public key, 64 hex> <nonce, 32 hex> <signature, base64>
"""

import base64
import binascii
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from email.utils import formatdate, parsedate_to_datetime

from dhtmesh.crypto.errors import CryptoError
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, node_id_from_public_key, verify_signature

AUTH_WINDOW = 20.0
SCHEME = "Ed25519"
_DOMAIN = "dhtmesh/request/v1"
NONCE_SIZE = 16
MAX_REMEMBERED = 65536  # signatures kept against replay: 20 s of 3,000 requests/s


class RequestAuthError(CryptoError):
    """Missing, malformed, stale, replayed or wrong signature: the request is not authenticated."""


def signing_message(
    method: str, path: str, body: bytes, recipient_id: bytes, date: str, nonce: bytes, bound: str = ""
) -> bytes:
    digests = [hashlib.sha256(body).hexdigest(), hashlib.sha256(bound.encode()).hexdigest()]
    lines = [_DOMAIN, method.upper(), path, *digests, recipient_id.hex(), date, nonce.hex()]
    return "\n".join(lines).encode()


def sign_request(
    identity: Identity,
    method: str,
    path: str,
    body: bytes,
    recipient_id: bytes,
    now: float | None = None,
    bound: str = "",
) -> dict[str, str]:
    """The `Date` and `Authorization` headers for a request to the node `recipient_id`; `bound` is any
    other part of the request the signature must cover (a header the body cannot carry)."""
    date = formatdate(time.time() if now is None else now, localtime=True)
    nonce = os.urandom(NONCE_SIZE)
    signature = identity.sign(signing_message(method, path, body, recipient_id, date, nonce, bound))
    authorization = f"{SCHEME} {identity.public_key.hex()} {nonce.hex()} {base64.b64encode(signature).decode()}"
    return {"Date": date, "Authorization": authorization}


class ReplayGuard:
    """The signatures accepted lately, so that each is accepted once, in bounded memory.

    When full it forgets the oldest entry and from then on refuses every request dated no later than
    it (the horizon), so a forgotten signature can never be replayed. A flood that fills it (dated in
    the future, it would push the horizon ahead of honest clocks) must be kept out by rate limits in
    front of it: the proxy caps signed requests well below what fills it within a window.
    """

    def __init__(self, window: float = AUTH_WINDOW, capacity: int = MAX_REMEMBERED) -> None:
        self._window = window
        self._capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signature -> its Date, in arrival order
        self._horizon = float("-inf")

    def first_use(self, signature: bytes, signed_at: float, now: float) -> bool:
        while self._seen and next(iter(self._seen.values())) < now - self._window:
            self._seen.popitem(last=False)  # the Date check refuses these anyway
        if signed_at <= self._horizon or signature in self._seen:
            return False
        if len(self._seen) >= self._capacity:
            _, forgotten_at = self._seen.popitem(last=False)
            self._horizon = max(self._horizon, forgotten_at)
            if signed_at <= self._horizon:
                return False
        self._seen[signature] = signed_at
        return True


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    recipient_id: bytes,
    guard: ReplayGuard | None,
    now: float | None = None,
    *,
    signer_id: bytes | None = None,
    bound: str = "",
) -> bytes:
    """The signer's public key if the request is signed, fresh and new; raises `RequestAuthError`.

    With `signer_id`, the signer must be that node id. The signature is remembered in `guard` only once
    every check passed (so requests that fail cost no room in it); no guard: not remembered (for a
    request that is refused anyway and changes nothing)."""
    now = time.time() if now is None else now
    date, authorization = headers.get("Date"), headers.get("Authorization")
    if not date or not authorization:
        raise RequestAuthError("missing Date or Authorization header")
    public_key, nonce, signature = parse_authorization(authorization)
    try:
        signed_at = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError) as error:
        raise RequestAuthError("unreadable Date header") from error
    if abs(now - signed_at) > AUTH_WINDOW:
        raise RequestAuthError(f"Date is more than {AUTH_WINDOW:.0f} s away from this node's clock")
    message = signing_message(method, path, body, recipient_id, date, nonce, bound)
    if not verify_signature(public_key, message, signature):
        raise RequestAuthError("bad signature")
    if signer_id is not None and node_id_from_public_key(public_key) != signer_id:
        raise RequestAuthError("not signed by this farmer's key")
    if guard is not None and not guard.first_use(signature, signed_at, now):
        raise RequestAuthError("replayed request")
    return public_key


def parse_authorization(value: str) -> tuple[bytes, bytes, bytes]:
    """The public key, nonce and signature of an `Authorization` header; raises `RequestAuthError`."""
    parts = value.split()
    if len(parts) != 4 or parts[0] != SCHEME:
        raise RequestAuthError(f"Authorization must be '{SCHEME} <public key hex> <nonce hex> <signature base64>'")
    try:
        public_key, nonce = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
        signature = base64.b64decode(parts[3], validate=True)
    except (ValueError, binascii.Error) as error:
        raise RequestAuthError("Authorization: bad hex or base64") from error
    if (len(public_key), len(nonce), len(signature)) != (PUBLIC_KEY_SIZE, NONCE_SIZE, SIGNATURE_SIZE):
        raise RequestAuthError("Authorization: wrong key, nonce or signature length")
    return public_key, nonce, signature
