"""Account records as every hop checks them (issue 17): a name bound to the key that signs it, under the
name's reserved key and value id; no other key's claim or successor where a replica holds it; fields
bounded (name, key and salt sizes, Argon2id limits a node must run at each login); the key derived
from the password, which the record never holds."""

import time
from dataclasses import replace

import msgpack
import pytest

from dhtmesh.crypto import Identity
from dhtmesh.node.dht import PutRefused
from dhtmesh.node.records.account import (
    ACCOUNT_TYPE,
    KIND,
    MEMLIMIT,
    OPSLIMIT,
    AccountRecord,
    account_key,
    decode_account,
    identity_for,
    new_account,
    signed_account,
)
from dhtmesh.node.records.kind import FORMAT, value_id_of
from dhtmesh.node.records.rules import check_value, is_valid_successor
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.value import InvalidValue, Value, sign_value
from dhtmesh.testing import Mesh, join_mesh, start_node

pytestmark = pytest.mark.unit

SALT = bytes(range(16))


def record_of(identity: Identity, name: str = "alice", **changes: object) -> AccountRecord:
    record = AccountRecord(name, identity.public_key, SALT, OPSLIMIT, MEMLIMIT, int(time.time()))
    return replace(record, **changes)


def raw_value(identity: Identity, name: str, fields: list) -> Value:
    """A value of the account type with any data, signed under the name's key and value id."""
    key = account_key(name)
    data = msgpack.packb([FORMAT, *fields], use_bin_type=True)
    return sign_value(identity, key, Value(value_id_of(key), data, ACCOUNT_TYPE, seq=1))


def test_a_new_account_holds_the_derived_public_key_never_the_password() -> None:
    password = "correct horse battery staple"
    record, value = new_account("alice@example.org", password, SALT, int(time.time()))
    check_value(account_key("alice@example.org"), value)
    assert decode_account(value.data) == record and value.owner == record.public_key
    assert identity_for(record, password).public_key == record.public_key
    assert identity_for(record, password + "!").public_key != record.public_key
    assert password.encode() not in value.data and (record.opslimit, record.memlimit) == (2, 64 * 1024 * 1024)


def test_only_the_key_it_names_signs_an_account() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    record = record_of(alice)
    check_value(account_key("alice"), signed_account(alice, record))
    with pytest.raises(InvalidValue, match="signed by the account's own key"):
        check_value(account_key("alice"), signed_account(mallory, record))
    forged = replace(signed_account(alice, record), data=replace(record, salt=bytes(16)).encode())
    with pytest.raises(InvalidValue):
        check_value(account_key("alice"), forged)


def test_an_account_lives_under_its_names_key_and_value_id_only() -> None:
    alice = Identity.generate()
    value = signed_account(alice, record_of(alice))
    with pytest.raises(InvalidValue, match="own key"):
        check_value(account_key("bob"), sign_value(alice, account_key("bob"), replace(value, sig=b"")))
    other_id = sign_value(alice, account_key("alice"), replace(value, id=value.id + 1, sig=b""))
    with pytest.raises(InvalidValue, match="own value id"):
        check_value(account_key("alice"), other_id)
    with pytest.raises(InvalidValue, match="reserved"):
        check_value(account_key("alice"), Value(7, b"junk"))


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("", ["", b"k" * 32, SALT, OPSLIMIT, MEMLIMIT, 0]),
        ("a" * 65, ["a" * 65, b"k" * 32, SALT, OPSLIMIT, MEMLIMIT, 0]),
        ("a b", ["a b", b"k" * 32, SALT, OPSLIMIT, MEMLIMIT, 0]),
        ("alice", ["alice", b"k" * 33, SALT, OPSLIMIT, MEMLIMIT, 0]),
        ("alice", ["alice", b"k" * 32, b"s" * 4096, OPSLIMIT, MEMLIMIT, 0]),
        ("alice", ["alice", b"k" * 32, SALT, 1, MEMLIMIT, 0]),
        ("alice", ["alice", b"k" * 32, SALT, 100, MEMLIMIT, 0]),
        ("alice", ["alice", b"k" * 32, SALT, OPSLIMIT, 1 << 40, 0]),
        ("alice", ["alice", b"k" * 32, SALT, OPSLIMIT, MEMLIMIT, int(time.time()) + 3600]),
        ("alice", ["alice", b"k" * 32, SALT, OPSLIMIT, MEMLIMIT, "yesterday"]),
        ("alice", ["alice", b"k" * 32, SALT, OPSLIMIT, MEMLIMIT, 0, "extra"]),
    ],
    ids=["empty", "long", "space", "key", "salt", "ops-low", "ops-high", "memory", "future", "time", "fields"],
)
def test_malformed_or_oversized_accounts_are_refused(name: str, fields: list) -> None:
    with pytest.raises(InvalidValue):
        check_value(account_key(name), raw_value(Identity.generate(), name, fields))


def test_an_account_never_changes_not_even_by_its_own_key() -> None:
    alice = Identity.generate()
    record = record_of(alice)
    current = signed_account(alice, record)
    again = KIND.sign(alice, record, 2)
    changed = KIND.sign(alice, replace(record, salt=bytes(16)), 2)
    assert is_valid_successor(current, again) and not is_valid_successor(current, changed)


async def test_no_hop_takes_a_forged_account_or_another_keys_claim_on_a_held_name() -> None:
    mesh = Mesh()
    try:
        nodes = await mesh.grow(4)
        alice, eve = Identity.generate(), Identity.generate()
        key = account_key("alice")
        result = await nodes[0].put(key, signed_account(alice, record_of(alice)), permanent=True)
        assert result.replicas >= 3

        claim = signed_account(eve, record_of(eve))  # a valid record of its own, for a name alice holds
        for node in nodes:
            with pytest.raises(PutRefused) as refused:
                await node.put(key, claim)
            assert refused.value.verdict is Verdict.REFUSE_ID_TAKEN
        forged = replace(signed_account(eve, record_of(eve, name="eve")), data=record_of(alice, name="eve").encode())
        for node in nodes[1:]:
            assert not await nodes[0].store_on(node.contact, account_key("eve"), forged, 3600)
            assert await nodes[0].store_on(node.contact, key, claim, 3600) is False

        held = await nodes[3].get(key, value_id_of(key), ACCOUNT_TYPE)
        assert [decode_account(value.data).public_key for value in held] == [alice.public_key]
    finally:
        await mesh.stop()


async def test_a_get_says_how_many_replicas_returned_each_claim() -> None:
    """What a node new to a name weighs two claims by (`DhtNode.get_held`): the replicas that hold each."""
    nodes = [await start_node() for _ in range(4)]
    try:
        await join_mesh(nodes)
        key = account_key("zoe")
        _, honest = new_account("zoe", "zoes-password", SALT, int(time.time()))
        _, hostile = new_account("zoe", "another-password", SALT[::-1], int(time.time()))
        assert nodes[3].store_locally(key, hostile).accepted  # before the put: it keeps its own claim
        await nodes[0].put(key, honest)
        held = {value.owner: holders for value, holders in await nodes[1].get_held(key, value_id_of(key))}
        assert held == {honest.owner: 3, hostile.owner: 1}
    finally:
        for node in nodes:
            await node.stop()
