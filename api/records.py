"""How a farmer's signed record rides on a signed request: the `Farmer-Record` header, base64 of the
value's msgpack wire form, which the request's signature also covers."""

import base64

import msgpack

from dhtmesh.node.values.value import InvalidValue, Value, value_from_wire

RECORD_HEADER = "Farmer-Record"
MAX_RECORD_HEADER = 4096


def record_header(value: Value) -> str:
    """How a client sends the value it signed: base64 of its msgpack wire form."""
    return base64.b64encode(msgpack.packb(value.to_wire(), use_bin_type=True)).decode()


def record_from_header(text: str) -> Value:
    """The value a `Farmer-Record` header carries. Raises `InvalidValue` for one too long or not a
    value, and base64's or msgpack's own errors (`binascii.Error`, `ValueError`, `TypeError`) for
    one that does not decode."""
    if len(text) > MAX_RECORD_HEADER:
        raise InvalidValue("too long")
    return value_from_wire(msgpack.unpackb(base64.b64decode(text, validate=True), raw=False))
