"""One value stored under a key: OpenDHT's fields, signed in one of two ways.

* dhtmesh's own: an Ed25519 owner (32 bytes) whose signature also covers the key, the id and the
  recipient, so a value cannot be replayed under another key or id.
* OpenDHT's: an RSA owner (DER, see `crypto.opendht`) whose signature covers OpenDHT's "to sign" form
  (seq, owner, type, data, utype; not the key, not the id), so OpenDHT clients' signed values are
  checked and kept here, and values a node signs with an OpenDHT identity verify in OpenDHT clients.

An encrypted value keeps its ciphertext in `data`. dhtmesh's (a sealed box) names its recipient's node
id in `to` and keeps owner and signature outside, so replicas can still enforce the edit policy on it.
An OpenDHT client's is opaque (recipient, owner and signature are inside the ciphertext): its `to` is
`HIDDEN_RECIPIENT`, and it is stored and served as it came.

Identity of a value within a key is `(owner, id)`; unsigned values have an empty owner.
"""

import os
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from dhtmesh.crypto import opendht
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, verify_signature
from dhtmesh.node.errors import NodeError
from dhtmesh.node.values.types import CERTIFICATE_TYPE

MAX_DATA_SIZE = 64 * 1024
MAX_UTYPE_SIZE = 256
MAX_ID = (1 << 64) - 1
MAX_SEQ = (1 << 32) - 1
MAX_TYPE = (1 << 16) - 1
MAX_OPENDHT_SEQ = (1 << 16) - 1  # OpenDHT's seq is a uint16
MAX_OPENDHT_OWNER_SIZE = 1024  # an RSA-4096 public key is 550 bytes of DER: larger is not parsed
RECIPIENT_SIZE = 20
# The `to` of an OpenDHT client's ciphertext, whose recipient is inside it. No key's id is zero: OpenDHT
# itself reads a zero hash as "none".
HIDDEN_RECIPIENT = bytes(RECIPIENT_SIZE)
_SIGNING_DOMAIN = b"dhtmesh/value/v1"


class InvalidValue(NodeError, ValueError):
    """A value whose fields are out of range or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class Value:
    id: int
    data: bytes
    type: int = 0
    owner: bytes = b""  # raw Ed25519 public key, an OpenDHT (RSA) key in DER, or empty: unsigned
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
    def opendht_signed(self) -> bool:
        """Signed by an OpenDHT (RSA) identity, not by a dhtmesh (Ed25519) one."""
        return bool(self.owner) and len(self.owner) != PUBLIC_KEY_SIZE

    @property
    def opaque(self) -> bool:
        """An OpenDHT client's ciphertext: nothing in it can be read or checked but by its recipient."""
        return self.to == HIDDEN_RECIPIENT

    @property
    def identity(self) -> tuple[bytes, int]:
        return (self.owner, self.id)

    @property
    def size(self) -> int:
        return len(self.data) + len(self.sig) + len(self.utype) + len(self.owner)

    def to_wire(self) -> list:
        fields = [self.id, self.type, self.data, self.owner, self.seq, self.sig, self.utype]
        return [*fields, self.to] if self.to else fields

    def verify(self, key: bytes) -> bool:
        if self.opendht_signed:
            return opendht.verify(self.owner, opendht_signing_bytes(self), self.sig)
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
        if self.opaque:
            raise InvalidValue("an OpenDHT ciphertext is unsigned outside: its signature is inside")
        if self.opendht_signed:
            self._check_opendht()
        elif len(self.sig) != SIGNATURE_SIZE:
            raise InvalidValue("bad signature")
        if signature and not self.verify(key):
            raise InvalidValue("bad signature")

    def _check_opendht(self) -> None:
        if self.to:
            raise InvalidValue("an OpenDHT-signed value with a recipient travels encrypted, as a cypher")
        if self.seq > MAX_OPENDHT_SEQ:
            raise InvalidValue("an OpenDHT-signed value's seq is a 16-bit unsigned integer")
        if len(self.owner) > MAX_OPENDHT_OWNER_SIZE:
            raise InvalidValue("owner: too long for an OpenDHT key")
        try:
            size = opendht.signature_size(self.owner)
        except opendht.OpenDhtKeyError as error:
            raise InvalidValue(f"owner: {error}") from error
        if len(self.sig) != size:
            raise InvalidValue("bad signature")


def signing_bytes(key: bytes, value: Value) -> bytes:
    """What the owner signs: the key (so a value cannot be replayed under another key) and every field."""
    return msgpack.packb(
        [_SIGNING_DOMAIN, key, value.id, value.seq, value.type, value.data, value.utype, value.to],
        use_bin_type=True,
    )


def opendht_signing_bytes(value: Value) -> bytes:
    """OpenDHT's `msgpack_pack_to_sign`: what an OpenDHT identity signs."""
    return msgpack.packb(_opendht_fields(value), use_bin_type=True)


def _opendht_fields(value: Value) -> dict[str, Any]:
    """The map OpenDHT signs, in its order: seq, owner, to (a recipient's key id: only inside a cipher
    text), type, data, utype (when set)."""
    fields: dict[str, Any] = {"seq": value.seq, "owner": value.owner}
    if value.to:
        fields["to"] = value.to
    fields |= {"type": value.type, "data": value.data}
    if value.utype:
        fields["utype"] = value.utype
    return fields


def sign_opendht_value(identity: opendht.RsaIdentity, value: Value) -> Value:
    owned = replace(value, owner=identity.public_der, sig=b"")
    return replace(owned, sig=identity.sign(opendht_signing_bytes(owned)))


def encrypt_opendht_value(identity: opendht.RsaIdentity, recipient: bytes, value: Value) -> Value:
    """OpenDHT's `Value::encrypt`: sign `value` bound to the recipient (an OpenDHT public key, DER), pack
    it with its signature, and encrypt that to the recipient; only the id stays outside."""
    inner = sign_opendht_value(identity, replace(value, to=opendht.key_id(recipient)))
    packed = msgpack.packb({"body": _opendht_fields(inner), "sig": inner.sig}, use_bin_type=True)
    return Value(value.id, opendht.encrypt(recipient, packed), to=HIDDEN_RECIPIENT)


def decrypt_opendht_value(identity: opendht.RsaIdentity, value: Value) -> Value:
    """OpenDHT's `Value::decrypt`: the signed value inside an OpenDHT cipher text meant for `identity`;
    raises `InvalidValue` unless it opens, names this identity as its recipient and its signature holds."""
    try:
        inside = msgpack.unpackb(identity.decrypt(value.data), raw=False)
        fields, sig = inside["body"], inside["sig"]
        inner = Value(value.id, fields["data"], fields["type"], fields["owner"], fields["seq"], sig)
        inner = replace(inner, utype=fields.get("utype", ""), to=fields.get("to", b""))
    except (opendht.OpenDhtKeyError, ValueError, KeyError, TypeError) as error:
        raise InvalidValue(f"not an OpenDHT cipher text for this identity: {error}") from error
    if inner.to != identity.key_id:
        raise InvalidValue("this cipher text is meant for another identity")
    if not opendht.verify(inner.owner, opendht_signing_bytes(inner), inner.sig):
        raise InvalidValue("the signature inside the cipher text does not hold")
    return inner


def certificate_value(identity: opendht.RsaIdentity) -> Value:
    """What an OpenDHT identity publishes under its key id (as OpenDHT's SecureDht does at start): its
    certificate in a msgpack bin, value id 1, type 8."""
    return Value(1, msgpack.packb(identity.certificate(), use_bin_type=True), CERTIFICATE_TYPE)


def certificate_public_key(value: Value) -> bytes:
    """The OpenDHT public key (DER) in a certificate value, as OpenDHT identities publish theirs under
    their key id: a msgpack bin holding the certificate. Raises `InvalidValue`."""
    try:
        certificate = msgpack.unpackb(value.data, raw=False)
        if not isinstance(certificate, bytes):
            raise InvalidValue("a certificate value holds a msgpack bin")
        return opendht.certificate_public_key(certificate)
    except (ValueError, opendht.OpenDhtKeyError) as error:
        raise InvalidValue(f"not an OpenDHT certificate: {error}") from error


def sign_value(identity: Identity, key: bytes, value: Value) -> Value:
    owned = replace(value, owner=identity.public_key, sig=b"")
    return replace(owned, sig=identity.sign(signing_bytes(key, owned)))


def owner_ref(owner: bytes) -> bytes:
    """How a list of versions (`dm_versions`) names an owner: itself when short (none, an Ed25519 key),
    else its OpenDHT key id. A key's versions must fit one reply whatever owns its values, and 180
    OpenDHT owners of 550 bytes each would not."""
    return owner if len(owner) <= PUBLIC_KEY_SIZE else opendht.key_id(owner)


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
