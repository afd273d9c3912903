"""`dhtmesh put|sign|encrypt|cancel|get|listen|info`: talk to a running node's proxy through the client
(`dhtmesh.client`), under keys hashed as OpenDHT's clients hash them (`dhtmesh.api.keys`)."""

import argparse
import base64
import contextlib
import functools
import json
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dhtmesh.api.keys import parse_key
from dhtmesh.api.shapes import Stored
from dhtmesh.api.value_json import ValueJsonError, value_from_json, value_to_json
from dhtmesh.cli.connect import as_text, run_client, write
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.output import printable
from dhtmesh.cli.paths import read_identity
from dhtmesh.cli.url import add_url
from dhtmesh.client import Client
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.opendht import OpenDhtKeyError, RsaIdentity, read_rsa_identity
from dhtmesh.crypto.sealed import SealedBoxError, open_sealed
from dhtmesh.node.values.value import InvalidValue, Value, decrypt_opendht_value, sign_value


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the proxy's JSON exactly (data in base64)")


def add_reading_arguments(parser: argparse.ArgumentParser) -> None:
    add_url(parser)
    parser.add_argument("key", metavar="KEY", help="any string (hashed with SHA-1), or a 40-hex hash")
    parser.add_argument(
        "-i", "--identity", metavar="FILE", help="decrypt the values encrypted to this identity (client side)"
    )
    parser.add_argument(
        "--opendht-identity",
        metavar="FILE",
        help="decrypt the OpenDHT values encrypted to this OpenDHT identity (an RSA key in PEM, such as a "
        "node's opendht-identity.pem; client side)",
    )
    add_json(parser)


def add_value_arguments(parser: argparse.ArgumentParser, id_help: str) -> None:
    """The arguments of every command that puts a value: `put`, `sign`, `encrypt`."""
    add_url(parser)
    parser.add_argument("key", metavar="KEY", help="any string (hashed with SHA-1), or a 40-hex hash")
    parser.add_argument("value", metavar="VALUE", help="the data, as text")
    parser.add_argument("--type", type=int, default=0, help="value type (0: expires after 10 minutes)")
    parser.add_argument(
        "--permanent", action="store_true", help="the node re-announces it until cancelled (dhtmesh cancel)"
    )
    parser.add_argument("--id", type=int, default=0, help=id_help)
    add_json(parser)


def add_put_arguments(parser: argparse.ArgumentParser) -> None:
    add_value_arguments(parser, "value id (0: the node picks one; required to sign; an edit keeps the id)")
    parser.add_argument("-i", "--identity", metavar="FILE", help="sign with this identity (client side)")
    parser.add_argument("--seq", type=int, default=0, help="sequence number of a signed value")


def add_sign_arguments(parser: argparse.ArgumentParser) -> None:
    add_value_arguments(parser, "value id (0: a new one; the id of the node's value edits it, with the next seq)")


def add_encrypt_arguments(parser: argparse.ArgumentParser) -> None:
    add_value_arguments(parser, "value id (0: a new one)")
    parser.add_argument(
        "--to", required=True, metavar="PUBLIC_KEY", help="the recipient's public key (as `identity show` prints it)"
    )


def add_cancel_arguments(parser: argparse.ArgumentParser) -> None:
    add_url(parser)
    parser.add_argument("key", metavar="KEY", help="the key the value was put under")
    parser.add_argument("value_id", metavar="ID", help="the value's id (put prints it)")
    add_json(parser)


def plain_value(args: argparse.Namespace) -> Value:
    """The value of an unsigned put: the node stores it as it is, or signs (and seals) it."""
    return Value(args.id, args.value.encode(), args.type, utype="text/plain")


def put_value(args: argparse.Namespace) -> Value:
    if not args.identity:
        return plain_value(args)
    if args.id <= 0:
        raise CliError("a signed put needs --id (a positive value id)")
    identity = read_identity(Path(args.identity))
    value = Value(args.id, args.value.encode(), args.type, seq=args.seq, utype="text/plain")
    return sign_value(identity, parse_key(args.key), value)


def put(args: argparse.Namespace) -> int:
    value = put_value(args)
    return _stored(args, lambda client: client.put(args.key, value, permanent=args.permanent))


def sign(args: argparse.Namespace) -> int:
    value = plain_value(args)
    return _stored(args, lambda client: client.sign(args.key, value, permanent=args.permanent))


def encrypt(args: argparse.Namespace) -> int:
    value = plain_value(args)
    return _stored(args, lambda client: client.encrypt(args.key, value, args.to, permanent=args.permanent))


def _stored(args: argparse.Namespace, put_with: Callable[[Client], Awaitable[Stored]]) -> int:
    async def action(client: Client) -> int:
        return write(printable(as_text((await put_with(client)).document), args.json))

    return run_client(args.url, action)


def cancel(args: argparse.Namespace) -> int:
    async def action(client: Client) -> int:
        cancelled = await client.cancel(args.key, args.value_id)
        return write(as_text(cancelled) if args.json else f"cancelled id={args.value_id}")

    return run_client(args.url, action)


def get(args: argparse.Namespace) -> int:
    reader = _reader(args)
    return run_client(args.url, lambda client: _print_stream(client.get(args.key), None, reader))


def info(args: argparse.Namespace) -> int:
    async def action(client: Client) -> int:
        return write(as_text(await client.info()))

    return run_client(args.url, action)


def listen(args: argparse.Namespace) -> int:
    reader = _reader(args)
    return run_client(args.url, lambda client: _print_stream(client.listen(args.key), args.count, reader))


async def _print_stream(
    documents: AsyncGenerator[dict[str, Any], None], count: int | None, reader: Callable[[str], str]
) -> int:
    """Print each value of a stream as it arrives, until it ends or `count` were printed."""
    async with contextlib.aclosing(documents):
        seen = 0
        async for document in documents:
            write(reader(as_text(document)))
            seen += 1
            if count is not None and seen >= count:
                break
    return 0


def _reader(args: argparse.Namespace) -> Callable[[str], str]:
    """A value line as it is to be printed: opened with `-i`'s identity when sealed to it, then as text
    (or JSON with `--json`)."""
    openers: list[Callable[[str], str]] = []
    if args.identity:
        identity = read_identity(Path(args.identity))
        openers.append(lambda line: decrypted_line(identity, line))
    if args.opendht_identity:
        try:
            rsa = read_rsa_identity(Path(args.opendht_identity))
        except OpenDhtKeyError as error:
            raise CliError(str(error)) from error
        openers.append(lambda line: opendht_decrypted_line(rsa, line))
    return lambda line: printable(functools.reduce(lambda text, opener: opener(text), openers, line), args.json)


def decrypted_line(identity: Identity, line: str) -> str:
    """The value's JSON line with `cypher` opened into `data` when it is addressed to `identity`;
    any other line unchanged (a value for someone else, a tampered one: said on stderr)."""
    try:
        document = json.loads(line)
    except ValueError:
        return line
    if not isinstance(document, dict) or document.get("to") != identity.node_id.hex() or "cypher" not in document:
        return line
    try:
        data = open_sealed(identity, base64.b64decode(str(document["cypher"]), validate=True))
    except (SealedBoxError, ValueError) as error:
        sys.stderr.write(f"dhtmesh: value {document.get('id')}: {error}\n")
        return line
    del document["cypher"]
    document |= {"data": base64.b64encode(data).decode(), "decrypted": True}
    return json.dumps(document) + "\n"


def opendht_decrypted_line(identity: RsaIdentity, line: str) -> str:
    """The value's JSON line opened into the signed value inside when it is an OpenDHT cipher text for
    `identity`; any other line unchanged (there is no telling whom an OpenDHT cipher text is for but by
    trying to open it)."""
    try:
        document = json.loads(line)
        sealed = value_from_json(document)
    except (ValueError, ValueJsonError):
        return line
    if not sealed.opaque:
        return line
    try:
        inner = decrypt_opendht_value(identity, sealed)
    except InvalidValue:
        return line
    opened = value_to_json(replace(inner, to=b""), expired=document.get("expired") is True) | {"decrypted": True}
    return json.dumps(opened) + "\n"
