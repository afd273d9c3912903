"""Record kinds as plug-ins: the one table of kinds gives the reserved types, their expiry and the
successor rule, and a kind declared in one module (here, a toy one) is checked, signed, placed and
aged by the shared `RecordKind` shape alone."""

from dataclasses import astuple, dataclass

import pytest

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.records import RESERVED_TYPES, InvalidRecord
from dhtmesh.node.records.blob import Manifest, signed_manifest
from dhtmesh.node.records.farmer import FARMER_RECORD_EXPIRY, FarmerRecord, signed_farmer_value
from dhtmesh.node.records.keys import ShardedDirectory
from dhtmesh.node.records.kind import RecordKind, pack, unpack, value_id_of
from dhtmesh.node.records.rules import KINDS, is_valid_successor, lifetime, open_refresh, per_host
from dhtmesh.node.values.types import DAY, MAX_TYPE_EXPIRY, expiry_for, register_expiry
from dhtmesh.node.values.value import Value, sign_value

NOTE_TYPE = 0x4E6F


@dataclass(frozen=True, slots=True)
class Note:
    author_id: bytes
    version: int
    written: int

    def encode(self) -> bytes:
        return pack(*astuple(self))


def decode_note(data: bytes) -> Note:
    note = Note(*unpack(data, "note", 3))
    if not (isinstance(note.author_id, bytes) and type(note.version) is int and type(note.written) is int):
        raise InvalidRecord("malformed note")
    return note


NOTES = ShardedDirectory(NOTE_TYPE, b"test/notes/", 4)
NOTE = RecordKind(
    NOTE_TYPE, DAY, "a note", decode_note, lambda note: note.author_id, NOTES, signer="its author",
    follows=lambda current, incoming: incoming.version > current.version, anchor=lambda note: note.written
)


def test_the_table_gives_every_kind_its_reserved_type_and_expiry() -> None:
    assert RESERVED_TYPES == frozenset(KINDS) and len(KINDS) == 11
    for kind in KINDS.values():
        assert expiry_for(kind.type) == kind.expiry <= MAX_TYPE_EXPIRY
    by_name = {kind.name: kind for kind in KINDS.values()}
    assert by_name["a manifest"].open_refresh and by_name["a holding"].per_host == 8
    assert by_name["a farmer record"].follows is not None and by_name["an audit log"].anchor is not None


def test_a_kind_declared_in_its_own_module_is_checked_signed_and_aged_by_the_shared_shape() -> None:
    author, mallory = Identity.generate(), Identity.generate()
    note = Note(author.node_id, 1, 1_000)
    value = NOTE.sign(author, note, 1)
    key = NOTES.key_for(author.node_id)
    NOTE.check(key, value)
    assert value.id == value_id_of(author.node_id) and NOTE.records_in([value, Value(1, b"x")]) == [note]
    assert NOTE.key_of_value(value) == key and NOTE.lives_until(note) == 1_000 + DAY
    other_shard = next(k for k in NOTES.keys if k != key)
    refusals = [
        (key, sign_value(mallory, key, Value(value.id, note.encode(), NOTE_TYPE, seq=1)), "signed by its author"),
        (other_shard, value, "under its own key"),
        (key, Value(value.id, note.encode(), NOTE_TYPE), "in the clear"),
        (key, sign_value(author, key, Value(value.id, b"\xc1", NOTE_TYPE, seq=1)), "note data is not msgpack"),
        (key, sign_value(author, key, Value(value.id, pack(1, 2), NOTE_TYPE, seq=1)), "not a format-1 note"),
    ]
    for under, refused, message in refusals:
        with pytest.raises(InvalidRecord, match=message):
            NOTE.check(under, refused)
    newer = NOTE.sign(author, Note(author.node_id, 2, 2_000), 2)
    older = NOTE.sign(author, Note(author.node_id, 0, 9), 3)
    assert NOTE.may_follow(value, newer) and not NOTE.may_follow(value, older)
    with pytest.raises(ValueError, match="either in a directory or under a key"):
        RecordKind(NOTE_TYPE, DAY, "a note", decode_note, lambda note: note.author_id)


def test_the_rules_read_each_kind_from_the_table() -> None:
    farmer = Identity.generate()
    record = FarmerRecord(farmer.node_id, node_address(farmer.node_id), 1_000, 2_000)
    farmer_value = signed_farmer_value(farmer, record, 1)
    # A farmer record lives its type's expiry after the last_seen its farmer signed, not after the put.
    assert lifetime(farmer_value, now=2_000 + 10) == FARMER_RECORD_EXPIRY - 10
    assert not open_refresh(farmer_value) and per_host(farmer_value) is None
    manifest_value = signed_manifest(farmer, Manifest((bytes(32),), (1,)))
    assert open_refresh(manifest_value) and lifetime(manifest_value) == expiry_for(manifest_value.type)
    # A record never changes type, and an earlier registration cannot follow a later one.
    assert not is_valid_successor(farmer_value, manifest_value)
    rewound = signed_farmer_value(farmer, FarmerRecord(farmer.node_id, node_address(farmer.node_id), 999, 2_000), 2)
    assert not is_valid_successor(farmer_value, rewound)


def test_a_type_keeps_the_expiry_it_was_first_given() -> None:
    for kind in KINDS.values():
        register_expiry(kind.type, kind.expiry)  # the same again: accepted
        with pytest.raises(ValueError, match="cannot live"):
            register_expiry(kind.type, kind.expiry + 1)
    with pytest.raises(ValueError, match="cannot live"):
        register_expiry(0x7FFF, MAX_TYPE_EXPIRY + 1)
    assert expiry_for(0x7FFF) == expiry_for(0)
