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

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, verify_signature

AUTH_WINDOW = 20.0
SCHEME = "Ed25519"
_DOMAIN = "dhtmesh/request/v1"
NONCE_SIZE = 16
MAX_REMEMBERED = 65536  # signatures kept against replay; more than a window's worth of honest traffic


class RequestAuthError(Exception):
    """Missing, malformed, stale, replayed or wrong signature: the request is not authenticated."""


def signing_message(method: str, path: str, body: bytes, recipient_id: bytes, date: str, nonce: bytes) -> bytes:
    lines = [_DOMAIN, method.upper(), path, hashlib.sha256(body).hexdigest(), recipient_id.hex(), date, nonce.hex()]
    return "\n".join(lines).encode()


def sign_request(
    identity: Identity, method: str, path: str, body: bytes, recipient_id: bytes, now: float | None = None
) -> dict[str, str]:
    """The `Date` and `Authorization` headers for a request to the node `recipient_id`."""
    date = formatdate(time.time() if now is None else now, localtime=True)
    nonce = os.urandom(NONCE_SIZE)
    signature = identity.sign(signing_message(method, path, body, recipient_id, date, nonce))
    authorization = f"{SCHEME} {identity.public_key.hex()} {nonce.hex()} {base64.b64encode(signature).decode()}"
    return {"Date": date, "Authorization": authorization}


class ReplayGuard:
    """The signatures accepted within the last window, so that each is accepted once."""

    def __init__(self, window: float = AUTH_WINDOW, capacity: int = MAX_REMEMBERED) -> None:
        self._window = window
        self._capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def first_use(self, signature: bytes, now: float) -> bool:
        """Whether `signature` was not seen within the window. When full of live signatures it refuses
        (fails closed): evicting one still inside the window would let its request be replayed."""
        while self._seen and next(iter(self._seen.values())) < now - 2 * self._window:
            self._seen.popitem(last=False)
        if signature in self._seen or len(self._seen) >= self._capacity:
            return False
        self._seen[signature] = now
        return True


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    recipient_id: bytes,
    guard: ReplayGuard,
    now: float | None = None,
) -> bytes:
    """The signer's public key if the request is signed, fresh and new; raises `RequestAuthError`."""
    now = time.time() if now is None else now
    date, authorization = headers.get("Date"), headers.get("Authorization")
    if not date or not authorization:
        raise RequestAuthError("missing Date or Authorization header")
    public_key, nonce, signature = _parse_authorization(authorization)
    try:
        signed_at = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError) as error:
        raise RequestAuthError("unreadable Date header") from error
    if abs(now - signed_at) > AUTH_WINDOW:
        raise RequestAuthError(f"Date is more than {AUTH_WINDOW:.0f} s away from this node's clock")
    if not verify_signature(public_key, signing_message(method, path, body, recipient_id, date, nonce), signature):
        raise RequestAuthError("bad signature")
    if not guard.first_use(signature, now):
        raise RequestAuthError("replayed request (or too many requests to remember)")
    return public_key


def _parse_authorization(value: str) -> tuple[bytes, bytes, bytes]:
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
