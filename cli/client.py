"""`dhtmesh put|get|listen|info`: talk to a running node's proxy over HTTP."""

import argparse
import asyncio
import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from dhtmesh.cli.errors import CliError
from dhtmesh.cli.paths import read_identity
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.sealed import SealedBoxError, open_sealed
from dhtmesh.node.values.value import Value, sign_value
from dhtmesh.proxy.keys import parse_key
from dhtmesh.proxy.value_json import value_to_json

DEFAULT_URL = "http://127.0.0.1:8080"


def add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the node's proxy (default {DEFAULT_URL})")


def add_reading_arguments(parser: argparse.ArgumentParser) -> None:
    add_url(parser)
    parser.add_argument("key")
    parser.add_argument(
        "-i", "--identity", metavar="FILE", help="decrypt the values encrypted to this identity (client side)"
    )


def add_put_arguments(parser: argparse.ArgumentParser) -> None:
    add_url(parser)
    parser.add_argument("key")
    parser.add_argument("value", help="the data, as text")
    parser.add_argument("--type", type=int, default=0, help="value type (default 0: expires after 10 min)")
    parser.add_argument("--permanent", action="store_true", help="keep re-announcing until cancelled")
    parser.add_argument("-i", "--identity", metavar="FILE", help="sign with this identity (client side)")
    parser.add_argument("--id", type=int, default=0, help="value id (required to sign; edits keep the id)")
    parser.add_argument("--seq", type=int, default=0, help="sequence number of a signed value")


def put_document(args: argparse.Namespace) -> dict[str, Any]:
    data = args.value.encode()
    if not args.identity:
        document = {"id": str(args.id), "type": args.type, "data": base64.b64encode(data).decode()}
        document["utype"] = "text/plain"
    else:
        if args.id <= 0:
            raise CliError("a signed put needs --id (a positive value id)")
        identity = read_identity(Path(args.identity))
        value = Value(args.id, data, args.type, seq=args.seq, utype="text/plain")
        document = value_to_json(sign_value(identity, parse_key(args.key), value))
    if args.permanent:
        document["permanent"] = True
    return document


def put(args: argparse.Namespace) -> int:
    return run_coroutine(_request(args.url, "POST", f"/key/{args.key}", put_document(args)))


def get(args: argparse.Namespace) -> int:
    return run_coroutine(_stream(args.url, f"/key/{args.key}", None, _reader(args)))


def info(args: argparse.Namespace) -> int:
    return run_coroutine(_request(args.url, "GET", "/"))


def listen(args: argparse.Namespace) -> int:
    return run_coroutine(_stream(args.url, f"/key/{args.key}/listen", args.count, _reader(args)))


def _reader(args: argparse.Namespace) -> Callable[[str], str]:
    if not args.identity:
        return lambda line: line
    identity = read_identity(Path(args.identity))
    return lambda line: decrypted_line(identity, line)


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


def run_coroutine(coroutine: Any) -> int:
    try:
        return asyncio.run(coroutine)
    except aiohttp.ClientError as error:
        raise CliError(f"cannot reach the node's proxy: {error}") from error
    except KeyboardInterrupt:
        return 130


async def _request(url: str, method: str, path: str, body: Any = None) -> int:
    async with aiohttp.ClientSession() as session, session.request(method, url + path, json=body) as response:
        text = await response.text()
        if response.status >= 400:
            raise CliError(f"{response.status}: {error_of(text)}")
        sys.stdout.write(text)
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
