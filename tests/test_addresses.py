"""Farmer addresses: dataserv's `nodeid2address` (base58check of 0x00 ‖ node id) and id parsing."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import InvalidAddress, address_payload, node_address, parse_node_id

# Bitcoin's genesis address and its hash160, a pair published everywhere: an independent check.
GENESIS_ADDRESS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
GENESIS_HASH160 = bytes.fromhex("62e907b15cbf27d5425399ebf6f0fb50ebb88f18")


def test_a_node_id_becomes_the_address_bitcoin_gives_the_same_hash160() -> None:
    assert node_address(GENESIS_HASH160) == GENESIS_ADDRESS
    assert parse_node_id(GENESIS_ADDRESS) == GENESIS_HASH160
    assert parse_node_id(GENESIS_HASH160.hex()) == GENESIS_HASH160


def test_dataservs_own_server_address_is_a_valid_payout_address() -> None:
    payload = address_payload("16ZcxFDdkVJR1P8GMNmWFyhS4EKrRMsWNG")
    assert payload[0] == 0 and len(payload) == 21


def test_an_identity_has_an_address_that_parses_back_to_its_node_id() -> None:
    identity = Identity.generate()
    assert parse_node_id(node_address(identity.node_id)) == identity.node_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not an address",
        GENESIS_HASH160.hex().upper(),  # dataserv's regex takes lowercase only
        GENESIS_HASH160.hex()[:-1],
        GENESIS_ADDRESS[:-1] + "b",  # checksum broken
        "0OIl" * 8,  # characters outside the base58 alphabet
        "1" * 500,
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",  # a valid address, but version 5 (script hash): not a node id
    ],
)
def test_anything_else_is_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_node_id(text)


@given(st.text(max_size=80))
def test_arbitrary_text_either_parses_or_raises_invalid_address(text: str) -> None:
    try:
        node_id = parse_node_id(text)
    except InvalidAddress:
        return
    assert len(node_id) == 20
