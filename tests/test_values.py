"""node/values/: signed values, their checks and wire form, the edit policy and expiry by type."""

from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtmesh.crypto import Identity
from dhtmesh.node.values import (
    MAX_DATA_SIZE,
    InvalidValue,
    Value,
    Verdict,
    expiry_for,
    judge_update,
    new_value_id,
    sign_value,
    value_from_wire,
)
from dhtmesh.node.values.value import MAX_ID, MAX_SEQ, MAX_UTYPE_SIZE

KEY_A = bytes(range(20))
KEY_B = bytes(range(1, 21))
OWNER = Identity.from_seed(b"o" * 32)
STRANGER = Identity.from_seed(b"s" * 32)


def signed(data: bytes = b"payload", *, seq: int = 1, value_id: int = 7, key: bytes = KEY_A, **fields: Any) -> Value:
    return sign_value(OWNER, key, Value(value_id, data, seq=seq, **fields))


def unsigned(data: bytes = b"payload", *, value_id: int = 7) -> Value:
    return Value(value_id, data)


def wire_round_trip(obj: Any) -> Any:
    """What a peer's datagram decodes to: msgpack as the codec packs and unpacks it."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False, strict_map_key=True)


# ---- signing --------------------------------------------------------------------------------------


def test_sign_value_sets_owner_and_verifies() -> None:
    value = signed(utype="text/plain", type=3)
    assert value.signed
    assert value.owner == OWNER.public_key
    assert len(value.sig) == 64
    assert value.verify(KEY_A)
    value.check(KEY_A)


def test_signature_covers_the_key() -> None:
    value = signed(key=KEY_A)
    assert not value.verify(KEY_B)
    with pytest.raises(InvalidValue, match="signature"):
        value.check(KEY_B)


@pytest.mark.parametrize(
    "changes",
    [
        {"data": b"payloaD"},
        {"data": b""},
        {"seq": 2},
        {"seq": 0},
        {"type": 1},
        {"utype": "x"},
        {"id": 8},
        {"owner": STRANGER.public_key},
        {"sig": bytes(64)},
    ],
    ids=repr,
)
def test_tampered_signed_value_fails(changes: dict[str, Any]) -> None:
    tampered = replace(signed(), **changes)
    assert not tampered.verify(KEY_A)
    with pytest.raises(InvalidValue):
        tampered.check(KEY_A)


def test_resigning_by_another_identity_changes_owner() -> None:
    stolen = sign_value(STRANGER, KEY_A, signed())
    assert stolen.owner == STRANGER.public_key
    assert stolen.identity == (STRANGER.public_key, 7)
    stolen.check(KEY_A)


def test_new_value_id_is_in_range() -> None:
    ids = {new_value_id() for _ in range(100)}
    assert all(0 < value_id <= MAX_ID for value_id in ids)
    assert len(ids) == 100


def test_size_counts_data_sig_utype_and_owner() -> None:
    """An owner counts too: an OpenDHT (RSA-4096) owner key is 550 bytes, its signature 512."""
    assert unsigned(b"abc").size == 3
    assert signed(b"abc", utype="xy").size == 3 + 64 + 2 + 32


# ---- range checks ---------------------------------------------------------------------------------


def describe(value: Value) -> str:
    return f"id={value.id},type={value.type},seq={value.seq},data={len(value.data)},owner={len(value.owner)}"


@pytest.mark.parametrize(
    "value",
    [
        Value(0, b"x"),
        Value(-1, b"x"),
        Value(MAX_ID + 1, b"x"),
        Value(1 << 64, b"x"),
        Value(1, b"x", type=-1),
        Value(1, b"x", type=1 << 16),
        Value(1, b"x" * (MAX_DATA_SIZE + 1)),
        Value(1, b"x", utype="u" * (MAX_UTYPE_SIZE + 1)),
        Value(1, b"x", utype="é" * (MAX_UTYPE_SIZE // 2 + 1)),
        Value(1, b"x", sig=bytes(64)),
        Value(1, b"x", seq=1),
        Value(1, b"x", owner=b"\x01" * 31, sig=bytes(64)),
        Value(1, b"x", owner=b"\x01" * 33, sig=bytes(64)),
    ],
    ids=lambda value: describe(value),
)
def test_check_rejects_out_of_range_fields(value: Value) -> None:
    with pytest.raises(InvalidValue):
        value.check(KEY_A)


def test_check_rejects_seq_above_32_bits_even_when_signed() -> None:
    value = signed(seq=MAX_SEQ + 1)
    assert value.verify(KEY_A)
    with pytest.raises(InvalidValue, match="seq"):
        value.check(KEY_A)


def test_check_rejects_oversized_signed_data() -> None:
    value = signed(b"x" * (MAX_DATA_SIZE + 1))
    with pytest.raises(InvalidValue, match="data"):
        value.check(KEY_A)


def test_check_rejects_truncated_signature() -> None:
    value = signed()
    with pytest.raises(InvalidValue, match="signature"):
        replace(value, sig=value.sig[:-1]).check(KEY_A)


@pytest.mark.parametrize(
    "value",
    [
        Value(1, b""),
        Value(MAX_ID, b"x" * MAX_DATA_SIZE, type=(1 << 16) - 1, utype="u" * MAX_UTYPE_SIZE),
    ],
)
def test_check_accepts_values_at_the_limits(value: Value) -> None:
    value.check(KEY_A)
    sign_value(OWNER, KEY_A, replace(value, seq=MAX_SEQ)).check(KEY_A)


# ---- wire form ------------------------------------------------------------------------------------


def test_wire_round_trip_keeps_every_field() -> None:
    value = signed(b"\x00\xff", seq=MAX_SEQ, value_id=MAX_ID, type=5, utype="application/json")
    parsed = value_from_wire(wire_round_trip(value.to_wire()))
    assert parsed == value
    parsed.check(KEY_A)


@pytest.mark.parametrize(
    "item",
    [
        None,
        b"bytes",
        "text",
        {"id": 1},
        [],
        [1, 0, b"d", b"", 0, b""],
        [1, 0, b"d", b"", 0, b"", "", "extra"],
        (1, 0, b"d", b"", 0, b"", ""),
        ["1", 0, b"d", b"", 0, b"", ""],
        [1.0, 0, b"d", b"", 0, b"", ""],
        [True, 0, b"d", b"", 0, b"", ""],
        [1, False, b"d", b"", 0, b"", ""],
        [1, 0, b"d", b"", None, b"", ""],
        [1, 0, "d", b"", 0, b"", ""],
        [1, 0, b"d", "", 0, b"", ""],
        [1, 0, b"d", b"", 0, "", ""],
        [1, 0, b"d", b"", 0, b"", b""],
        [1, 0, bytearray(b"d"), b"", 0, b"", ""],
        [1, 0, [b"d"], b"", 0, b"", ""],
    ],
    ids=repr,
)
def test_value_from_wire_rejects_wrong_shapes(item: Any) -> None:
    with pytest.raises(InvalidValue):
        value_from_wire(item)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    | st.binary(max_size=40)
)
msgpack_objects = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=5) | st.binary(max_size=5), inner),
    max_leaves=20,
)
field_like = (
    st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=70)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
    | scalars
)
seven_fields = st.lists(field_like, min_size=7, max_size=7)
wire_int = st.integers(-(2**63), 2**64 - 1)
wire_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
well_typed = st.tuples(
    wire_int, wire_int, st.binary(max_size=100), st.binary(max_size=40), wire_int, st.binary(max_size=70), wire_text
).map(list)


def parse_and_check(item: Any) -> None:
    """Either a Value (which `check` accepts or refuses with InvalidValue) or InvalidValue; nothing else."""
    try:
        value = value_from_wire(wire_round_trip(item))
    except InvalidValue:
        return
    assert isinstance(value, Value)
    try:
        value.check(KEY_A)
    except InvalidValue:
        return


@settings(max_examples=300, deadline=None)
@given(item=msgpack_objects | seven_fields | well_typed)
def test_value_from_wire_returns_value_or_raises_invalid_value(item: Any) -> None:
    parse_and_check(item)


@settings(max_examples=100, deadline=None)
@given(item=well_typed)
def test_well_typed_wire_items_parse(item: list) -> None:
    value = value_from_wire(wire_round_trip(item))
    assert value.to_wire() == item


@settings(max_examples=200, deadline=None)
@given(
    value_id=st.integers(1, MAX_ID),
    seq=st.integers(0, MAX_SEQ),
    value_type=st.integers(0, (1 << 16) - 1),
    data=st.binary(max_size=200),
    utype=st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
)
def test_signed_values_survive_the_wire(value_id: int, seq: int, value_type: int, data: bytes, utype: str) -> None:
    value = sign_value(OWNER, KEY_A, Value(value_id, data, value_type, seq=seq, utype=utype))
    parsed = value_from_wire(wire_round_trip(value.to_wire()))
    assert parsed == value
    parsed.check(KEY_A)


# ---- edit policy ----------------------------------------------------------------------------------


def test_new_value_with_free_id_is_new() -> None:
    assert judge_update(None, signed(), set()) is Verdict.NEW
    assert judge_update(None, signed(), {OWNER.public_key}) is Verdict.NEW
    assert judge_update(None, unsigned(), set()) is Verdict.NEW


def test_id_owned_by_another_owner_is_taken() -> None:
    assert judge_update(None, signed(), {STRANGER.public_key}) is Verdict.REFUSE_ID_TAKEN
    assert judge_update(None, signed(), {b""}) is Verdict.REFUSE_ID_TAKEN
    assert judge_update(None, unsigned(), {OWNER.public_key}) is Verdict.REFUSE_ID_TAKEN


def test_unsigned_edit_is_refused() -> None:
    verdict = judge_update(unsigned(b"first"), unsigned(b"second"), {b""})
    assert verdict is Verdict.REFUSE_EDIT_UNSIGNED
    assert not verdict.accepted


@pytest.mark.parametrize("value", [unsigned(), signed()], ids=["unsigned", "signed"])
def test_identical_value_refreshes(value: Value) -> None:
    verdict = judge_update(value, replace(value), {value.owner})
    assert verdict is Verdict.REFRESH
    assert verdict.accepted


def test_signed_higher_seq_updates() -> None:
    verdict = judge_update(signed(b"old", seq=1), signed(b"new", seq=2), {OWNER.public_key})
    assert verdict is Verdict.UPDATE
    assert verdict.accepted


def test_signed_equal_seq_with_other_bytes_is_stale() -> None:
    assert judge_update(signed(b"old", seq=3), signed(b"new", seq=3), {OWNER.public_key}) is Verdict.REFUSE_STALE


def test_signed_lower_seq_is_stale() -> None:
    assert judge_update(signed(b"new", seq=3), signed(b"old", seq=2), {OWNER.public_key}) is Verdict.REFUSE_STALE
    assert judge_update(signed(b"new", seq=3), signed(b"new", seq=2), {OWNER.public_key}) is Verdict.REFUSE_STALE


def test_only_new_update_refresh_and_held_are_accepted() -> None:
    accepted = {verdict for verdict in Verdict if verdict.accepted}
    assert accepted == {Verdict.NEW, Verdict.UPDATE, Verdict.REFRESH, Verdict.HELD}


# ---- expiry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_type", "seconds"),
    [(0, 600.0), (1, 300.0), (2, 900.0), (3, 300.0), (4, 7 * 86400.0), (5, 60.0), (8, 7 * 86400.0)],
)
def test_expiry_of_known_types(value_type: int, seconds: float) -> None:
    assert expiry_for(value_type) == seconds


@pytest.mark.parametrize("value_type", [6, 7, 9, 1000, 65535])
def test_expiry_of_unknown_types_is_the_default(value_type: int) -> None:
    assert expiry_for(value_type) == 600.0
