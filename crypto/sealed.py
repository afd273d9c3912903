"""Anonymous encryption to a recipient's Ed25519 key: a sealed box to its X25519 twin."""

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import CryptoError
from nacl.public import PublicKey, SealedBox

from dhtmesh.crypto import errors
from dhtmesh.crypto.identity import Identity


class SealedBoxError(errors.CryptoError):
    """The ciphertext is not for this identity, or was tampered with."""


def seal_to(recipient_public_key: bytes, plaintext: bytes) -> bytes:
    """Encrypt `plaintext` so that only the holder of `recipient_public_key` (Ed25519) can read it."""
    try:
        curve_key = crypto_sign_ed25519_pk_to_curve25519(recipient_public_key)
    except (CryptoError, ValueError, TypeError) as error:
        raise SealedBoxError("not a valid Ed25519 public key") from error
    return SealedBox(PublicKey(curve_key)).encrypt(plaintext)


def open_sealed(identity: Identity, ciphertext: bytes) -> bytes:
    try:
        return SealedBox(identity.signing_key.to_curve25519_private_key()).decrypt(ciphertext)
    except (CryptoError, ValueError, TypeError) as error:
        raise SealedBoxError("cannot decrypt: not addressed to this identity or tampered") from error
