"""A node's or user's Ed25519 identity, and its file on disk (mode 0600, optionally password-sealed).

File format (JSON, never pickle):
    {"version": 1, "kind": "ed25519", "seed": "<base64>"}                       plain
    {"version": 1, "kind": "ed25519", "kdf": "argon2id", "opslimit": N,
     "memlimit": N, "salt": "<base64>", "sealed_seed": "<base64>"}               password-protected
A password-protected seed is encrypted with secretbox under a key derived by Argon2id.
"""

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import nacl.pwhash
import nacl.secret
import nacl.utils
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from dhtmesh.crypto import errors
from dhtmesh.crypto.keys import node_id_from_public_key

FILE_VERSION = 1
KDF_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
KDF_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


class IdentityError(errors.CryptoError):
    """An identity file that cannot be read, parsed or unlocked; the message is fit for a user."""


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair. `node_id` is the SHA-1 of the public key."""

    signing_key: SigningKey = field(repr=False)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        return cls(SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> bytes:
        return node_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature


def save_identity(identity: Identity, path: Path, password: str | None = None) -> None:
    """Write `identity` to `path` atomically, readable by its owner only."""
    seed = bytes(identity.signing_key)
    document: dict[str, object] = {"version": FILE_VERSION, "kind": "ed25519"}
    if password:
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        box = nacl.secret.SecretBox(_derive_key(password, salt, KDF_OPSLIMIT, KDF_MEMLIMIT))
        document |= {
            "kdf": "argon2id",
            "opslimit": KDF_OPSLIMIT,
            "memlimit": KDF_MEMLIMIT,
            "salt": _b64(salt),
            "sealed_seed": _b64(box.encrypt(seed)),
        }
    else:
        document["seed"] = _b64(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    # A leftover temporary file keeps its old mode through O_CREAT: remove it so 0600 always applies.
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_identity(path: Path, password: str | None = None) -> Identity:
    """Read an identity file; every failure becomes an `IdentityError` naming the problem."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise IdentityError(f"identity file {path} does not exist") from error
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise IdentityError(f"identity file {path} is unreadable: {error}") from error
    return _identity_in(document, password, f"identity file {path}")


def is_sealed(text: str) -> bool:
    """Whether an identity document's seed is sealed by a password (unlocking it costs Argon2id)."""
    try:
        document = json.loads(text)
    except ValueError:
        return False
    return isinstance(document, dict) and "sealed_seed" in document


def identity_from_text(text: str, password: str | None) -> Identity:
    """The identity an identity file's text holds (a credential that carries it, as dcp-rest's Basic
    auth carries a keystore). Its Argon2id costs may be no higher than the ones this package writes, so
    that a stranger's document cannot make the unlocking node spend more memory or time."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise IdentityError("the identity is not JSON") from error
    if isinstance(document, dict) and "sealed_seed" in document:
        ops, memory = document.get("opslimit"), document.get("memlimit")
        if not (type(ops) is int and type(memory) is int and 0 < ops <= KDF_OPSLIMIT and 0 < memory <= KDF_MEMLIMIT):
            raise IdentityError("the identity's key derivation costs more than this node allows")
    return _identity_in(document, password, "the identity")


def _identity_in(document: object, password: str | None, where: str) -> Identity:
    if not isinstance(document, dict) or document.get("kind") != "ed25519":
        raise IdentityError(f"{where} is not a dhtmesh Ed25519 identity")
    try:
        seed = _seed_from(document, password)
        return Identity.from_seed(seed)
    except IdentityError as error:
        raise IdentityError(f"{where}: {error}") from error
    except (KeyError, TypeError, ValueError, OverflowError, CryptoError) as error:
        raise IdentityError(f"{where} is corrupt: {error}") from error


def is_password_protected(path: Path) -> bool:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and "sealed_seed" in document


def _seed_from(document: dict, password: str | None) -> bytes:
    if "seed" in document:
        return base64.b64decode(document["seed"], validate=True)
    if document.get("kdf") != "argon2id":
        raise IdentityError("unknown key derivation")
    if not password:
        raise IdentityError("is password-protected; give the password (DHTMESH_PASSWORD)")
    key = _derive_key(
        password,
        base64.b64decode(document["salt"], validate=True),
        int(document["opslimit"]),
        int(document["memlimit"]),
    )
    try:
        return nacl.secret.SecretBox(key).decrypt(base64.b64decode(document["sealed_seed"], validate=True))
    except CryptoError as error:
        raise IdentityError("wrong password") from error


def _derive_key(password: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, password.encode(), salt, opslimit=opslimit, memlimit=memlimit
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
