"""Values as OpenDHT's proxy writes them in JSON: `id` a decimal string, `data` standard base64, the owner
as a PEM public key (Ed25519 here), `sig` base64; an encrypted value has `cypher` (base64) and `to`
(the recipient's 40-hex node id) instead of `data`. Parsing is strict: every wrong field is an error."""

import base64
import binascii
from typing import Any

from dhtmesh.node.values.value import MAX_ID, MAX_SEQ, MAX_TYPE, Value

# DER SubjectPublicKeyInfo header of an Ed25519 key (RFC 8410): the 32 key bytes follow it.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class ValueJsonError(ValueError):
    """A value JSON document that is not acceptable; the message names the field."""


def owner_to_pem(public_key: bytes) -> str:
    body = base64.b64encode(_ED25519_SPKI_PREFIX + public_key).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def owner_from_pem(text: str) -> bytes:
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise ValueJsonError("owner must be a PEM public key")
    der = _b64decode("".join(lines[1:-1]), "owner")
    if len(der) != len(_ED25519_SPKI_PREFIX) + 32 or not der.startswith(_ED25519_SPKI_PREFIX):
        raise ValueJsonError("owner must be an Ed25519 public key")
    return der[len(_ED25519_SPKI_PREFIX) :]


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
        to = _recipient(document.get("to"))
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
    return Value(value_id, data, value_type, owner, seq, sig, utype, to)


def _recipient(raw: Any) -> bytes:
    if not (isinstance(raw, str) and len(raw) == 40):
        raise ValueJsonError("an encrypted value needs `to`: the recipient's 40-hex node id")
    try:
        return bytes.fromhex(raw)
    except ValueError as error:
        raise ValueJsonError("to must be 40 hex characters") from error


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
