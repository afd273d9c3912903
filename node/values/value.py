"""One value stored under a key: OpenDHT's fields, with Ed25519 signatures that also cover the key.

An encrypted value keeps its ciphertext (a sealed box) in `data` and its recipient's node id in `to`;
unlike OpenDHT, the owner and signature stay outside the ciphertext, so replicas can still enforce the
edit policy on it.

Identity of a value within a key is `(owner, id)`; unsigned values have an empty owner.
"""

import os
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, verify_signature

MAX_DATA_SIZE = 64 * 1024
MAX_UTYPE_SIZE = 256
MAX_ID = (1 << 64) - 1
MAX_SEQ = (1 << 32) - 1
MAX_TYPE = (1 << 16) - 1
RECIPIENT_SIZE = 20
_SIGNING_DOMAIN = b"dhtmesh/value/v1"


class InvalidValue(ValueError):
    """A value whose fields are out of range or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class Value:
    id: int
    data: bytes
    type: int = 0
    owner: bytes = b""  # raw Ed25519 public key, or empty for an unsigned value
    seq: int = 0
    sig: bytes = b""
    utype: str = ""
    to: bytes = b""  # recipient's node id when `data` is sealed to that recipient

    @property
    def encrypted(self) -> bool:
        return bool(self.to)

    @property
    def signed(self) -> bool:
        return bool(self.owner)

    @property
    def identity(self) -> tuple[bytes, int]:
        return (self.owner, self.id)

    @property
    def size(self) -> int:
        return len(self.data) + len(self.sig) + len(self.utype)

    def to_wire(self) -> list:
        fields = [self.id, self.type, self.data, self.owner, self.seq, self.sig, self.utype]
        return [*fields, self.to] if self.to else fields

    def verify(self, key: bytes) -> bool:
        return verify_signature(self.owner, signing_bytes(key, self), self.sig)

    def check(self, key: bytes, *, signature: bool = True) -> None:
        """Raise `InvalidValue` unless every field is in range and a signed value verifies under `key`
        (`signature=False` skips the signature itself: for a value verified when it came in)."""
        if not 0 < self.id <= MAX_ID:
            raise InvalidValue("value id must be between 1 and 2^64-1")
        if not 0 <= self.type <= MAX_TYPE:
            raise InvalidValue("type must be a 16-bit unsigned integer")
        if not 0 <= self.seq <= MAX_SEQ:
            raise InvalidValue("seq must be a 32-bit unsigned integer")
        if len(self.data) > MAX_DATA_SIZE:
            raise InvalidValue(f"data is larger than {MAX_DATA_SIZE} bytes")
        if len(self.utype.encode()) > MAX_UTYPE_SIZE:
            raise InvalidValue("utype is too long")
        if self.to and len(self.to) != RECIPIENT_SIZE:
            raise InvalidValue(f"to must be a {RECIPIENT_SIZE}-byte node id")
        if not self.owner:
            if self.sig or self.seq:
                raise InvalidValue("an unsigned value carries no signature and no seq")
            return
        if len(self.owner) != PUBLIC_KEY_SIZE:
            raise InvalidValue("owner must be a 32-byte Ed25519 public key")
        if len(self.sig) != SIGNATURE_SIZE or (signature and not self.verify(key)):
            raise InvalidValue("bad signature")


def signing_bytes(key: bytes, value: Value) -> bytes:
    """What the owner signs: the key (so a value cannot be replayed under another key) and every field."""
    return msgpack.packb(
        [_SIGNING_DOMAIN, key, value.id, value.seq, value.type, value.data, value.utype, value.to],
        use_bin_type=True,
    )


def sign_value(identity: Identity, key: bytes, value: Value) -> Value:
    owned = replace(value, owner=identity.public_key, sig=b"")
    return replace(owned, sig=identity.sign(signing_bytes(key, owned)))


def new_value_id() -> int:
    return int.from_bytes(os.urandom(8), "big") or 1


def value_from_wire(item: Any) -> Value:
    """Parse a value from a peer, checking every type; raises `InvalidValue` for anything malformed."""
    if not (isinstance(item, list) and len(item) in (7, 8)):
        raise InvalidValue("a value is a 7- or 8-element list")
    value_id, value_type, data, owner, seq, sig, utype, *recipient = item
    to = recipient[0] if recipient else b""
    if not all(isinstance(field, int) and not isinstance(field, bool) for field in (value_id, value_type, seq)):
        raise InvalidValue("id, type and seq must be integers")
    if not all(isinstance(field, bytes) for field in (data, owner, sig, to)) or not isinstance(utype, str):
        raise InvalidValue("data, owner, sig and to must be bytes; utype a string")
    return Value(value_id, data, value_type, owner, seq, sig, utype, to)
