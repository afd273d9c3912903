"""OpenDHT's public-key crypto, so that OpenDHT clients' signed and encrypted values work on dhtmesh.

OpenDHT identities are RSA keys. Facts this module follows (OpenDHT 2.4.12, `src/crypto.cpp`, checked
against values captured from Debian's `dhtnode -i`):
* a public key travels as DER SubjectPublicKeyInfo (PEM in JSON); its id is SHA-1 of that DER;
* a signature is RSA PKCS#1 v1.5 over SHA-512;
* `encrypt` is one RSA PKCS#1 v1.5 block when the plaintext fits in it, otherwise an RSA block holding
  a random AES key (the largest of 128/192/256 bits that fits) followed by AES-GCM: a 12-byte IV, the
  ciphertext and a 16-byte tag.

Keys are bounded (2048 to 4096 bits, exponent 65537) so that a hostile owner key cannot make a check
expensive. The private side (`RsaIdentity`) is a PEM file with mode 0600.
"""

import datetime
import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dhtmesh.crypto.errors import CryptoError

MIN_BITS = 2048
MAX_BITS = 4096
DEFAULT_BITS = 4096
PUBLIC_EXPONENT = 65537
_PKCS1_OVERHEAD = 11
_AES_KEY_SIZES = (16, 24, 32)
_GCM_IV_SIZE = 12
_GCM_TAG_SIZE = 16
_CERTIFICATE_FROM = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_CERTIFICATE_UNTIL = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)


class OpenDhtKeyError(CryptoError, ValueError):
    """A key, signature or ciphertext that is not an acceptable OpenDHT one; the message says why."""


def public_key_der(encoded: bytes) -> bytes:
    """The canonical DER form of an OpenDHT public key given as PEM or DER; raises `OpenDhtKeyError`."""
    return _public_der(_load_public(encoded))


def public_key_pem(der: bytes) -> str:
    return (
        _loaded(der).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    )


def key_id(der: bytes) -> bytes:
    """OpenDHT's `PublicKey::getId()`: the 20-byte id clients address a key's owner by."""
    return hashlib.sha1(der).digest()


def certificate_public_key(encoded: bytes) -> bytes:
    """The public key (DER) of an X.509 certificate in PEM (the first of a chain) or DER, as OpenDHT
    identities publish theirs; raises `OpenDhtKeyError`."""
    try:
        if encoded.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(encoded)
        else:
            certificate = x509.load_der_x509_certificate(encoded)
        key = certificate.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise OpenDhtKeyError("not an X.509 certificate") from error
    if not isinstance(key, rsa.RSAPublicKey):
        raise OpenDhtKeyError("the certificate's key is not RSA")
    _check_bounds(key)
    return _public_der(key)


def signature_size(der: bytes) -> int:
    return _loaded(der).key_size // 8


def verify(der: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is the key's OpenDHT signature of `message`; never raises on bad input."""
    try:
        _loaded(der).verify(signature, message, padding.PKCS1v15(), hashes.SHA512())
    except (InvalidSignature, OpenDhtKeyError, ValueError):
        return False
    return True


def encrypt(der: bytes, plaintext: bytes) -> bytes:
    """OpenDHT's `PublicKey::encrypt`: what only the key's owner can read."""
    key = _loaded(der)
    block = key.key_size // 8
    if len(plaintext) <= block - _PKCS1_OVERHEAD:
        return key.encrypt(plaintext, padding.PKCS1v15())
    aes_key = os.urandom(max(size for size in _AES_KEY_SIZES if size <= block - _PKCS1_OVERHEAD))
    iv = os.urandom(_GCM_IV_SIZE)
    return key.encrypt(aes_key, padding.PKCS1v15()) + iv + AESGCM(aes_key).encrypt(iv, plaintext, None)


@dataclass(frozen=True)
class RsaIdentity:
    """An OpenDHT-compatible identity: an RSA private key."""

    private_key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls, bits: int = DEFAULT_BITS) -> "RsaIdentity":
        return cls(rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits))

    @property
    def public_der(self) -> bytes:
        return _public_der(self.private_key.public_key())

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_der)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message, padding.PKCS1v15(), hashes.SHA512())

    def certificate(self) -> bytes:
        """A self-signed X.509 certificate (PEM) of this identity, as OpenDHT identities publish theirs
        so that others can encrypt to them. The same bytes every time (fixed dates, the serial from
        the key id, a deterministic signature): published again, it is a refresh, not an edit."""
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"dhtmesh node {self.key_id.hex()}")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(int.from_bytes(self.key_id, "big") >> 1)
            .not_valid_before(_CERTIFICATE_FROM)
            .not_valid_after(_CERTIFICATE_UNTIL)
            .sign(self.private_key, hashes.SHA512())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def decrypt(self, cypher: bytes) -> bytes:
        """OpenDHT's `PrivateKey::decrypt`; raises `OpenDhtKeyError` for anything that does not open."""
        block = self.private_key.key_size // 8
        if len(cypher) < block:
            raise OpenDhtKeyError("the ciphertext is shorter than one RSA block")
        try:
            head = self.private_key.decrypt(cypher[:block], padding.PKCS1v15())
            if len(cypher) == block:
                return head
            if len(head) not in _AES_KEY_SIZES or len(cypher) < block + _GCM_IV_SIZE + _GCM_TAG_SIZE:
                raise OpenDhtKeyError("not an OpenDHT ciphertext")
            iv, sealed = cypher[block : block + _GCM_IV_SIZE], cypher[block + _GCM_IV_SIZE :]
            return AESGCM(head).decrypt(iv, sealed, None)
        except (ValueError, InvalidTag) as error:
            raise OpenDhtKeyError("the value does not open with this key") from error


def load_or_create_rsa_identity(path: Path, bits: int = DEFAULT_BITS) -> RsaIdentity:
    """The identity in `path` (PEM, PKCS#8, unencrypted, mode 0600), made there on first use."""
    if path.exists():
        return read_rsa_identity(path)
    identity = RsaIdentity.generate(bits)
    pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return identity


def read_rsa_identity(path: Path) -> RsaIdentity:
    """An OpenDHT identity's private key from a PEM file; raises `OpenDhtKeyError`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise OpenDhtKeyError(f"cannot read the OpenDHT identity {path}: {error}") from error
    if not isinstance(key, rsa.RSAPrivateKey):
        raise OpenDhtKeyError(f"{path} is not an RSA key: OpenDHT identities are RSA")
    _check_bounds(key.public_key())
    return RsaIdentity(key)


def _load_public(encoded: bytes) -> rsa.RSAPublicKey:
    try:
        if encoded.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(encoded)
        else:
            key = serialization.load_der_public_key(encoded)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise OpenDhtKeyError("not a public key in PEM or DER") from error
    if not isinstance(key, rsa.RSAPublicKey):
        raise OpenDhtKeyError("an OpenDHT owner key must be RSA")
    _check_bounds(key)
    return key


def _check_bounds(key: rsa.RSAPublicKey) -> None:
    if not MIN_BITS <= key.key_size <= MAX_BITS or key.public_numbers().e != PUBLIC_EXPONENT:
        raise OpenDhtKeyError(f"an OpenDHT key must be RSA of {MIN_BITS} to {MAX_BITS} bits with exponent 65537")


def _public_der(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@functools.lru_cache(maxsize=256)
def _loaded(der: bytes) -> rsa.RSAPublicKey:
    """Parsing a key costs more than checking a signature with it, and a key signs many values."""
    key = _load_public(der)
    if _public_der(key) != der:
        raise OpenDhtKeyError("the owner key is not in canonical DER")
    return key
