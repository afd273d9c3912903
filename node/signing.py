"""A node's puts of values it signs or encrypts itself, as OpenDHT's putSigned and putEncrypted do, and
what every put answers (`PutResult`) or raises (`PutRefused`).

`SignedPuts` is part of `DhtNode` (a mixin): it signs with the node's identity (or its OpenDHT one) and
hands the value to `DhtNode.put`.
"""

from dataclasses import dataclass, replace
from typing import TypedDict, Unpack

from dhtmesh.crypto import opendht
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.crypto.sealed import SealedBoxError, seal_to
from dhtmesh.node.errors import NodeError
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.rules import ValueRules
from dhtmesh.node.values.types import CERTIFICATE_TYPE
from dhtmesh.node.values.value import (
    MAX_OPENDHT_SEQ,
    InvalidValue,
    Value,
    certificate_public_key,
    certificate_value,
    encrypt_opendht_value,
    new_value_id,
    sign_opendht_value,
    sign_value,
)


class PutRefused(NodeError):
    """The value was refused by this node's own store (stale seq, edit of an unsigned value, quota...)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.value)
        self.verdict = verdict


class PutOptions(TypedDict, total=False):
    """How a put is kept (`DhtNode.put`): whether it is `permanent`, `until` when, for which `client`."""

    permanent: bool
    until: float
    client: str


@dataclass(frozen=True, slots=True)
class PutResult:
    value: Value
    replicas: int  # remote nodes that accepted the value
    asked: int  # remote nodes it was sent to

    @property
    def stored(self) -> int:
        """Copies that now exist: the remote replicas plus this node's own."""
        return self.replicas + 1


class SignedPuts:
    """`DhtNode`'s signed and encrypted puts (they end in its `put`, and read through its `get`)."""

    identity: Identity
    opendht_identity: opendht.RsaIdentity | None
    rules: ValueRules

    def sign(self, key: bytes, value: Value) -> Value:
        return sign_value(self.identity, key, value)

    async def put_signed(self, key: bytes, value: Value, **options: Unpack[PutOptions]) -> PutResult:
        """Sign `value` as this node and put it, as OpenDHT's putSigned does: id 0 gets a random id; an
        existing id gets a seq above every version of it this node (or the mesh) holds. With an OpenDHT
        identity the signature is OpenDHT's, else dhtmesh's.

        Record types (farmer records, manifests, holdings, audit logs) are refused: the node's key is its
        farmer's and auditor's, so a record signed on request would speak for the farmer."""
        opendht_signature = self.opendht_identity is not None
        return await self._sign_and_put(key, value, opendht_signature, options)

    async def put_encrypted(
        self, key: bytes, value: Value, recipient_key: bytes, **options: Unpack[PutOptions]
    ) -> PutResult:
        """Seal `value.data` to the recipient's Ed25519 public key, sign as this node (Ed25519: the
        recipient is a dhtmesh identity), and put it."""
        try:
            sealed = seal_to(recipient_key, value.data)
        except SealedBoxError as error:
            raise InvalidValue(str(error)) from error
        encrypted = replace(value, data=sealed, to=node_id_from_public_key(recipient_key))
        return await self._sign_and_put(key, encrypted, False, options)

    async def _sign_and_put(self, key: bytes, value: Value, opendht_signature: bool, options: PutOptions) -> PutResult:
        if value.type in self.rules.signed_by_services_only:
            raise InvalidValue(f"type {value.type} is a record type, signed only by the node's own services")
        rsa = self.opendht_identity if opendht_signature else None
        owner = rsa.public_der if rsa else self.identity.public_key
        if value.id == 0:
            value = replace(value, id=new_value_id())
        else:
            versions = [v.seq for v in await self.get(key) if v.identity == (owner, value.id)]
            if versions:
                value = replace(value, seq=max(value.seq, max(versions) + 1))
        if rsa is None:
            return await self.put(key, self.sign(key, value), **options)
        if value.seq > MAX_OPENDHT_SEQ:
            raise InvalidValue("an OpenDHT-signed value's seq is a 16-bit unsigned integer")
        return await self.put(key, sign_opendht_value(rsa, value), **options)

    async def put_encrypted_opendht(
        self, key: bytes, value: Value, recipient_id: bytes, **options: Unpack[PutOptions]
    ) -> PutResult:
        """OpenDHT's putEncrypted: find the recipient's public key from the certificate it published
        under its key id, sign `value` with this node's OpenDHT identity and encrypt it to them."""
        if self.opendht_identity is None:
            raise InvalidValue("this node has no OpenDHT identity (start it with --opendht-identity)")
        recipient = await self.opendht_public_key(recipient_id)
        if recipient is None:
            raise InvalidValue(f"no OpenDHT certificate of {recipient_id.hex()} found in the mesh")
        value = replace(value, id=value.id or new_value_id())
        encrypted = encrypt_opendht_value(self.opendht_identity, recipient, value)
        return await self.put(key, encrypted, **options)

    async def publish_opendht_certificate(self) -> None:
        """Keep this node's OpenDHT certificate under its key id, so OpenDHT clients (and `/encrypt` of
        other nodes) can encrypt values to this node's OpenDHT identity."""
        if self.opendht_identity is not None:
            identity = self.opendht_identity
            await self.put(identity.key_id, certificate_value(identity), permanent=True)

    async def opendht_public_key(self, key_id: bytes) -> bytes | None:
        """The OpenDHT public key whose id is `key_id`, from the certificates published under that id."""
        for value in await self.get(key_id, value_type=CERTIFICATE_TYPE):
            try:
                public_key = certificate_public_key(value)
            except InvalidValue:
                continue  # anyone may put junk under the id: only a key with this very id counts
            if opendht.key_id(public_key) == key_id:
                return public_key
        return None
