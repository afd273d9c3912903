"""Public-key facts that need no private key: node ids derived from keys, and signature checks."""

import hashlib

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
NODE_ID_SIZE = 20


def node_id_from_public_key(public_key: bytes) -> bytes:
    """The 160-bit node id of a key: SHA-1 of the raw Ed25519 public key, as wide as `kademlia`'s ids."""
    return hashlib.sha1(public_key).digest()


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `public_key`'s Ed25519 signature of `message`; never raises on bad input."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False
    return True
