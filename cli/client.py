"""`dhtmesh put|sign|encrypt|cancel|get|listen|info`: talk to a running node's proxy over HTTP, under keys
hashed here as OpenDHT's clients hash them."""

import argparse
import asyncio
import base64
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from dhtmesh.cli.errors import CliError
from dhtmesh.cli.output import printable
from dhtmesh.cli.paths import read_identity
from dhtmesh.cli.url import add_url
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.opendht import OpenDhtKeyError, RsaIdentity, read_rsa_identity
from dhtmesh.crypto.sealed import SealedBoxError, open_sealed
from dhtmesh.node.values.value import InvalidValue, Value, decrypt_opendht_value, sign_value
from dhtmesh.proxy.keys import parse_key
from dhtmesh.proxy.value_json import ValueJsonError, value_from_json, value_to_json


def key_path(key: str) -> str:
    """`/key/<40 hex>`: the key hashed here as OpenDHT clients hash it (`parse_key`: SHA-1 of the exact
    string, unless it is 40 hex), so that `?`, `#`, `/` or `..` in a key reach the node as part of it."""
    return f"/key/{parse_key(key).hex()}"


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


def plain_document(args: argparse.Namespace) -> dict[str, Any]:
    """The value JSON of an unsigned put: the node stores it as it is, or signs (and seals) it."""
    data = base64.b64encode(args.value.encode()).decode()
    document: dict[str, Any] = {"id": str(args.id), "type": args.type, "data": data, "utype": "text/plain"}
    if args.permanent:
        document["permanent"] = True
    return document


def put_document(args: argparse.Namespace) -> dict[str, Any]:
    if not args.identity:
        return plain_document(args)
    if args.id <= 0:
        raise CliError("a signed put needs --id (a positive value id)")
    identity = read_identity(Path(args.identity))
    value = Value(args.id, args.value.encode(), args.type, seq=args.seq, utype="text/plain")
    document = value_to_json(sign_value(identity, parse_key(args.key), value))
    if args.permanent:
        document["permanent"] = True
    return document


def put(args: argparse.Namespace) -> int:
    return _post(args, "", put_document(args))


def sign(args: argparse.Namespace) -> int:
    return _post(args, "/sign", plain_document(args))


def encrypt(args: argparse.Namespace) -> int:
    return _post(args, "/encrypt", plain_document(args) | {"to": args.to})


def _post(args: argparse.Namespace, action: str, document: dict[str, Any]) -> int:
    path = key_path(args.key) + action
    return run_coroutine(_request(args.url, "POST", path, lambda text: printable(text, args.json), document))


def cancel(args: argparse.Namespace) -> int:
    def show(text: str) -> str:
        return printable(text, True) if args.json else f"cancelled id={args.value_id}\n"

    return run_coroutine(_request(args.url, "DELETE", f"{key_path(args.key)}/{args.value_id}", show))


def get(args: argparse.Namespace) -> int:
    return run_coroutine(_stream(args.url, key_path(args.key), None, _reader(args)))


def info(args: argparse.Namespace) -> int:
    return run_coroutine(_request(args.url, "GET", "/", lambda text: printable(text, True)))


def listen(args: argparse.Namespace) -> int:
    return run_coroutine(_stream(args.url, key_path(args.key) + "/listen", args.count, _reader(args)))


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


def run_coroutine(coroutine: Any) -> int:
    try:
        return asyncio.run(coroutine)
    except aiohttp.ClientError as error:
        raise CliError(f"cannot reach the node's proxy: {error}") from error
    except KeyboardInterrupt:
        return 130


async def _request(url: str, method: str, path: str, show: Callable[[str], str], body: Any = None) -> int:
    async with aiohttp.ClientSession() as session, session.request(method, url + path, json=body) as response:
        text = await response.text()
        if response.status >= 400:
            raise CliError(f"{response.status}: {error_of(text)}")
        sys.stdout.write(show(text))
        sys.stdout.flush()
        return 0


async def _stream(url: str, path: str, count: int | None, reader: Callable[[str], str]) -> int:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url + path) as response:
        if response.status >= 400:
            raise CliError(f"{response.status}: {error_of(await response.text())}")
        seen = 0
        async for line in response.content:
            sys.stdout.write(reader(line.decode()))
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                break
        return 0


def error_of(text: str) -> str:
    try:
        return str(json.loads(text).get("err", text))
    except (ValueError, AttributeError):
        return text.strip()
