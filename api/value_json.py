"""Values as OpenDHT's proxy writes them in JSON: `id` a decimal string, `data` standard base64, the owner
as a PEM public key (Ed25519 for dhtmesh's signatures, RSA for OpenDHT's), `sig` base64. An encrypted
value has `cypher` (base64) instead of `data`: dhtmesh's with `to` (the recipient's 40-hex node id) and
its owner and signature beside it, an OpenDHT client's alone (all the rest is inside the cipher text).
Parsing is strict: every wrong field is an error."""

import base64
import binascii
from typing import Any

from dhtmesh.crypto import opendht
from dhtmesh.node.values.value import HIDDEN_RECIPIENT, MAX_ID, MAX_SEQ, MAX_TYPE, Value

# DER SubjectPublicKeyInfo header of an Ed25519 key (RFC 8410): the 32 key bytes follow it.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class ValueJsonError(ValueError):
    """A value JSON document that is not acceptable; the message names the field."""


def owner_to_pem(public_key: bytes) -> str:
    if len(public_key) != 32:
        return opendht.public_key_pem(public_key)
    body = base64.b64encode(_ED25519_SPKI_PREFIX + public_key).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def owner_from_pem(text: str) -> bytes:
    """The raw Ed25519 key, or an OpenDHT (RSA) key's DER, of a PEM public key."""
    # OpenDHT's clients send the C string's terminating NUL along (gnutls counts it in the PEM's size).
    lines = [line.strip() for line in text.strip().rstrip("\x00").strip().splitlines()]
    if len(lines) < 3 or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise ValueJsonError("owner must be a PEM public key")
    der = _b64decode("".join(lines[1:-1]), "owner")
    if der.startswith(_ED25519_SPKI_PREFIX):
        if len(der) != len(_ED25519_SPKI_PREFIX) + 32:
            raise ValueJsonError("owner is a malformed Ed25519 public key")
        return der[len(_ED25519_SPKI_PREFIX) :]
    try:
        return opendht.public_key_der(der)
    except opendht.OpenDhtKeyError as error:
        raise ValueJsonError(f"owner must be an Ed25519 or an OpenDHT (RSA) public key: {error}") from error


def public_key_from_text(text: Any) -> bytes:
    """A recipient's Ed25519 public key, as 64 hex characters or PEM."""
    if not isinstance(text, str):
        raise ValueJsonError("to must be a string")
    if text.lstrip().startswith("-----BEGIN"):
        return owner_from_pem(text)
    try:
        key = bytes.fromhex(text)
    except ValueError as error:
        raise ValueJsonError("to must be the recipient's Ed25519 public key (64 hex characters or PEM)") from error
    if len(key) != 32:
        raise ValueJsonError("to must be the recipient's Ed25519 public key (64 hex characters or PEM)")
    return key


def value_to_json(value: Value, *, expired: bool = False) -> dict[str, Any]:
    payload = base64.b64encode(value.data).decode()
    if value.opaque:  # as OpenDHT writes it: nothing else is known
        document = {"id": str(value.id), "cypher": payload}
        return document | {"expired": True} if expired else document
    document: dict[str, Any] = {"id": str(value.id), "type": value.type}
    if value.encrypted:
        document |= {"cypher": payload, "to": value.to.hex()}
    else:
        document["data"] = payload
    if value.utype:
        document["utype"] = value.utype
    if value.signed:
        document["owner"] = owner_to_pem(value.owner)
        document["seq"] = value.seq
        document["sig"] = base64.b64encode(value.sig).decode()
    if expired:
        document["expired"] = True
    return document


def value_from_json(document: Any) -> Value:
    """A value from a POST body; id 0 (or none) is kept as 0, meaning "assign one"."""
    if not isinstance(document, dict):
        raise ValueJsonError("the body must be a JSON object")
    value_id = _id(document.get("id", 0))
    value_type = _int(document.get("type", 0), "type", MAX_TYPE)
    to = b""
    if "cypher" in document:
        data = _b64decode(_str(document["cypher"], "cypher"), "cypher")
        # An OpenDHT client's cipher text comes alone: its recipient, owner and signature are inside.
        to = _recipient(document.get("to")) if "to" in document or "owner" in document else HIDDEN_RECIPIENT
    else:
        data = _b64decode(_str(document.get("data", ""), "data"), "data")
    utype = _str(document.get("utype", ""), "utype")
    owner = b""
    seq = 0
    sig = b""
    if "owner" in document:
        owner = owner_from_pem(_str(document["owner"], "owner"))
        seq = _int(document.get("seq", 0), "seq", MAX_SEQ)
        sig = _b64decode(_str(document.get("sig", ""), "sig"), "sig")
    elif "sig" in document:
        raise ValueJsonError("sig without owner")
    if to == HIDDEN_RECIPIENT:
        # OpenDHT sends only the id and the cipher text to other nodes, which hold it as type 0.
        return Value(value_id, data, to=HIDDEN_RECIPIENT)
    return Value(value_id, data, value_type, owner, seq, sig, utype, to)


def _recipient(raw: Any) -> bytes:
    if not (isinstance(raw, str) and len(raw) == 40):
        raise ValueJsonError("a signed encrypted value needs `to`: the recipient's 40-hex node id")
    try:
        recipient = bytes.fromhex(raw)
    except ValueError as error:
        raise ValueJsonError("to must be 40 hex characters") from error
    if recipient == HIDDEN_RECIPIENT:
        raise ValueJsonError("to must name a recipient, not zero")
    return recipient


def _id(raw: Any) -> int:
    if isinstance(raw, str) and raw.isdecimal():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_ID:
        raise ValueJsonError("id must be a decimal string or integer in [0, 2^64-1]")
    return raw


def _int(raw: Any, name: str, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= high:
        raise ValueJsonError(f"{name} must be an integer in [0, {high}]")
    return raw


def _str(raw: Any, name: str) -> str:
    if not isinstance(raw, str):
        raise ValueJsonError(f"{name} must be a string")
    return raw


def _b64decode(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueJsonError(f"{name} is not valid base64") from error
