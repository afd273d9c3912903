"""Farmer addresses: a node id written the way dataserv (develop) writes it, `base58check(0x00 ‖ id)`,
a valid Bitcoin-style address, and the parsing that accepts either that form or 40 hex characters."""

import re

import base58

from dhtmesh.crypto.errors import CryptoError
from dhtmesh.crypto.keys import NODE_ID_SIZE

ADDRESS_VERSION = b"\x00"
_HEX_NODE_ID = re.compile(r"[0-9a-f]{40}")
_MAX_ADDRESS_LENGTH = 64  # base58check of 21..~40 bytes; anything longer is not worth decoding


class InvalidAddress(CryptoError, ValueError):
    """Not a node id, or not a base58check address with a valid checksum."""


def node_address(node_id: bytes) -> str:
    """The address dataserv's `nodeid2address` gives a node id."""
    if len(node_id) != NODE_ID_SIZE:
        raise InvalidAddress("a node id is 20 bytes")
    return base58.b58encode_check(ADDRESS_VERSION + node_id).decode()


def address_payload(address: str) -> bytes:
    """The version byte and payload of a base58check address; the checksum is verified, as dataserv
    verifies payout addresses."""
    if not address or len(address) > _MAX_ADDRESS_LENGTH:
        raise InvalidAddress("not a base58check address")
    try:
        payload = base58.b58decode_check(address)
    except ValueError as error:
        raise InvalidAddress("not a base58check address (bad characters or checksum)") from error
    if len(payload) < 2:
        raise InvalidAddress("not a base58check address (too short)")
    return payload


def parse_node_id(text: str) -> bytes:
    """A farmer id given as 40 lowercase hex characters (dataserv develop's `nodeid`) or as its address."""
    if _HEX_NODE_ID.fullmatch(text):
        return bytes.fromhex(text)
    payload = address_payload(text)
    if payload[:1] != ADDRESS_VERSION or len(payload) != 1 + NODE_ID_SIZE:
        raise InvalidAddress("not a node id or a node address")
    return payload[1:]
