"""The access tokens of the accounts: JWTs signed with EdDSA by the account's own (password-derived)
key, so that no node holds a secret and every node verifies one against the account record.

Header `{"alg": "EdDSA", "typ": "JWT"}`; claims `sub` (the name), `iat`, `exp` (Unix seconds; ptgctl
reads `exp`) and `jti` (random, so that two tokens issued in one second differ). Reading a token
(`claimed`) trusts nothing: it only says whose record to check it against (`verified`), which
refuses any algorithm but EdDSA (no "none", no HS256 keyed with the public key), a bad signature, an
expired token, and a token issued in the future or for longer than `MAX_LIFETIME`.
"""

import secrets
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dhtmesh.crypto.identity import Identity
from dhtmesh.node.accounts.errors import BadToken
from dhtmesh.node.records.account import valid_name
from dhtmesh.node.records.kind import CLOCK_SKEW
from dhtmesh.node.values.types import DAY

ALGORITHM = "EdDSA"
MAX_TOKEN_BYTES = 8 * 1024  # refused before it is decoded
MAX_LIFETIME = int(30 * DAY)  # ptg's tokens: 30 days, also the default
_CLAIMS = ["sub", "iat", "exp", "jti"]


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    iat: int
    exp: int


def mint(identity: Identity, name: str, now: float, lifetime: float) -> tuple[str, int]:
    """A token for `name`, signed by the account's key; and its `exp`."""
    issued = int(now)
    expires = issued + min(MAX_LIFETIME, max(1, int(lifetime)))
    claims = {"sub": name, "iat": issued, "exp": expires, "jti": secrets.token_urlsafe(12)}
    key = Ed25519PrivateKey.from_private_bytes(bytes(identity.signing_key))
    return jwt.encode(claims, key, algorithm=ALGORITHM), expires


def claimed(token: str) -> str:
    """The user a token claims to be for, read without trusting it; raises `BadToken`."""
    if len(token) > MAX_TOKEN_BYTES:
        raise BadToken(f"the token is over {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():  # a JWT is base64url and dots; PyJWT would fail to encode a lone surrogate
        raise BadToken("a token is ASCII")
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.InvalidTokenError as error:
        raise BadToken(f"malformed token ({error})") from error
    if algorithm != ALGORITHM:
        raise BadToken(f"the token's algorithm must be {ALGORITHM}")
    if not valid_name(sub):
        raise BadToken("the token names no valid user")
    return sub


def verified(token: str, public_key: bytes, now: float) -> Claims:
    """The token's claims, once its signature by `public_key` and its times are checked; raises `BadToken`."""
    key = Ed25519PublicKey.from_public_bytes(public_key)
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": _CLAIMS, "verify_iat": False})
    except jwt.InvalidTokenError as error:
        raise BadToken(f"invalid token ({error})") from error
    iat, exp = claims["iat"], claims["exp"]
    if type(iat) is not int or type(exp) is not int:
        raise BadToken("the token's times are not integers")
    if iat > now + CLOCK_SKEW or exp - iat > MAX_LIFETIME:
        raise BadToken("the token is issued in the future, or for too long")
    return Claims(claims["sub"], iat, exp)
