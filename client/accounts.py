"""Mesh-wide accounts as a user makes one: the account key is derived here, from the password
(Argon2id with a fresh salt), and signs the account record; only the signed record is sent
(`PUT /api/v0/users/{name}`), so the password never leaves the client."""

import asyncio
import os
import time
from typing import Any

from dhtmesh.api import paths
from dhtmesh.api.value_json import value_from_json, value_to_json
from dhtmesh.client.errors import ApiError, ClientError
from dhtmesh.client.transport import Transport
from dhtmesh.node.records.account import (
    SALT_SIZE,
    AccountRecord,
    decode_account,
    identity_for,
    new_account,
    signed_account,
    valid_name,
)
from dhtmesh.node.values.value import Value

__all__ = ["InvalidName", "NameTaken", "account_value", "add_user", "valid_name"]


class InvalidName(ValueError):
    """A name no account may have (refused before any work)."""


class NameTaken(ClientError):
    """The name's account has another password: it is someone else's (or the password is mistyped)."""


def account_value(name: str, password: str) -> tuple[AccountRecord, dict[str, Any]]:
    """A new account's record and its signed value, as value JSON (Argon2id runs here: about 0.15 s)."""
    if not valid_name(name):
        raise InvalidName("an account name is 1 to 64 of A-Z a-z 0-9 . _ @ -")
    record, value = new_account(name, password, os.urandom(SALT_SIZE), int(time.time()))
    return record, value_to_json(value)


async def add_user(transport: Transport, name: str, password: str) -> dict[str, Any]:
    """Create the account `name` through the node, or publish it again if it exists with this password
    (its record, re-signed: the same value): the node's answer, `{name, public_key, key}`. A name held
    with another password is the node's 409."""
    path = paths.USER.format(name=paths.segment(name))
    try:
        held = value_from_json(await transport.document("GET", path))
    except ApiError as error:
        if error.status != 404:
            raise
        held = None
    if held is None:
        _, document = await asyncio.to_thread(account_value, name, password)
    else:
        document = value_to_json(await asyncio.to_thread(_again, name, held, password))
    return await transport.document("PUT", path, json=document)


def _again(name: str, held: Value, password: str) -> Value:
    """The held record signed again with the account's key, which `password` must give."""
    record = decode_account(held.data)
    identity = identity_for(record, password)
    if identity.public_key != record.public_key:
        raise NameTaken(f"the name {name} is taken (its password is another)")
    return signed_account(identity, record)
