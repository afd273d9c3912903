"""`dhtmesh farmer register|ping|height|bandwidth|show|audits|online|total`: a farmer identity talks to
any node's proxy, as dataserv-client talked to dataserv.

The farmer is the identity given with `-i`, else the node's own: the identity in the node's data
directory, used only once it is proven to be that of the node at `--url`. Nothing here creates a key.

A change is made on the farmer's side: the client reads its current signed record from the mesh
(`/key/<shard>`), applies dataserv's rule for the request, signs the new state and sends it with a
signed request. The node only checks and stores it, so it never needs (or gets) the farmer's key.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from dhtmesh.cli.client import error_of, run_coroutine
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.paths import IDENTITY_FILE, default_data_dir, read_identity
from dhtmesh.cli.url import add_url
from dhtmesh.crypto.addresses import InvalidAddress, address_payload, node_address, parse_node_id
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, FarmerRecord, farmer_key, next_signed
from dhtmesh.node.records.farmer_events import pinged, registered, with_bandwidth, with_height
from dhtmesh.node.records.registry import find_record
from dhtmesh.node.records.rules import check_value
from dhtmesh.node.values.value import InvalidValue, Value
from dhtmesh.proxy.farmer_routes import RECORD_HEADER, record_header
from dhtmesh.proxy.value_json import ValueJsonError, value_from_json

ACTIONS = ("register", "ping", "height", "bandwidth", "show", "audits", "online", "total")
ACTIONS_HELP = """actions:
  register            register the farmer (--payout ADDR)
  ping                say the farmer is online
  height N            the farmer's capacity, in 128 MiB shards
  bandwidth UP DOWN   the farmer's measured bandwidth
  show                the farmer as the mesh lists it, with its audit reputation (--id: another farmer)
  audits              every published audit of the farmer, newest first (--id: another farmer)
  online              the farmers seen in the last 5 minutes (--json: as JSON)
  total               how many farmers are online, and their capacity in TB"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_url(parser)
    parser.add_argument("action", choices=ACTIONS, help="see below")
    parser.add_argument("numbers", nargs="*", type=int, metavar="N", help="height N, or bandwidth UP DOWN")
    parser.add_argument(
        "-i",
        "--identity",
        metavar="FILE",
        help="the farmer's identity (default: the node's own, from its data directory, when it is the node at --url)",
    )
    parser.add_argument(
        "--persist", metavar="DIR", help="the node's data directory, where its identity is (default: as `run`)"
    )
    parser.add_argument("--payout", metavar="ADDR", help="register: payout address (default: the farmer's own)")
    parser.add_argument("--ip", default="", help="the IP address the farmer states in its record")
    parser.add_argument("--json", action="store_true", help="online: the JSON listing instead of text lines")
    parser.add_argument("--id", metavar="NODEID", help="show, audits: another farmer (node id or address)")


def check_payout(text: str | None) -> None:
    """A payout is a base58check address with a valid checksum, as dataserv checks it."""
    if text is None:
        return
    try:
        address_payload(text)
    except InvalidAddress as error:
        raise CliError(f"--payout: {error}") from error


def command(args: argparse.Namespace) -> int:
    expected = {"height": 1, "bandwidth": 2}.get(args.action, 0)
    if len(args.numbers) != expected:
        raise CliError(f"{args.action} takes {expected} number(s)")
    if any(n < 0 for n in args.numbers):
        raise CliError("numbers must be non-negative")
    check_payout(args.payout)
    if args.id and args.action not in ("show", "audits"):
        raise CliError(f"--id is for show and audits: {args.action} acts as the farmer (-i, else the node's own)")
    return run_coroutine(_command(args))


async def _command(args: argparse.Namespace) -> int:
    async with aiohttp.ClientSession(args.url) as session:
        if args.action == "online":
            return await _print(session, "/api/online/json" if args.json else "/api/online")
        if args.action == "total":
            return await _print(session, "/api/total")
        if args.action in ("show", "audits"):
            farmer_id = _farmer_id(args.id) if args.id else (await farmer_identity(session, args)).node_id
            suffix = "/audits" if args.action == "audits" else ""
            return await _print(session, f"/api/farmer/{farmer_id.hex()}{suffix}")
        return await _change(session, await farmer_identity(session, args), args)


def _farmer_id(text: str) -> bytes:
    try:
        return parse_node_id(text)
    except InvalidAddress as error:
        raise CliError(f"--id: {error}") from error


async def farmer_identity(session: aiohttp.ClientSession, args: argparse.Namespace) -> Identity:
    """`-i`'s identity; else the node's own, read from its data directory, once the node at `--url`
    proves to be the one that identity belongs to (a farmer command never makes a new farmer)."""
    if args.identity:
        return read_identity(Path(args.identity))
    path = (Path(args.persist) if args.persist else default_data_dir()) / IDENTITY_FILE
    if not path.exists():
        raise CliError(
            f"no node identity at {path}: give the farmer's identity with -i FILE (`dhtmesh identity new -i FILE`"
            " makes one), or the node's data directory with --persist DIR"
        )
    identity = read_identity(path)
    node_id = await recipient_id(session)
    if identity.node_id != node_id:
        raise CliError(
            f"{path} is node {identity.node_id.hex()}, not the node at {args.url} ({node_id.hex()}):"
            " give the farmer's identity with -i FILE, or that node's data directory with --persist DIR"
        )
    return identity


async def _change(session: aiohttp.ClientSession, identity: Identity, args: argparse.Namespace) -> int:
    farmer_id, now = identity.node_id, int(time.time())
    # A registration builds on nothing (the node answers 409 if the farmer is registered: let it say so).
    current = None if args.action == "register" else await current_record(session, farmer_id)
    if args.action == "register":
        payout = args.payout or node_address(farmer_id)
        path = f"/api/register/{farmer_id.hex()}/{payout}"
        record: FarmerRecord | None = registered(farmer_id, payout, now, args.ip)
    elif current is None:
        raise CliError(f"farmer {farmer_id.hex()} is not registered (run: dhtmesh farmer register)")
    elif args.action == "ping":
        path, record = f"/api/ping/{farmer_id.hex()}", pinged(current[1], now, args.ip)
    elif args.action == "height":
        (height,) = args.numbers
        path = f"/api/height/{farmer_id.hex()}/{height}"
        record = with_height(current[1], height, now, args.ip) if height <= HEIGHT_LIMIT else None
    else:
        upload, download = args.numbers
        path = f"/api/bandwidth/{farmer_id.hex()}/{upload}/{download}"
        record = with_bandwidth(current[1], upload, download, now, args.ip)
    signed = next_signed(identity, current, record) if record is not None else None
    return await _print(session, path, signed_headers(identity, path, signed, await recipient_id(session)))


def signed_headers(identity: Identity, path: str, signed: Value | None, recipient: bytes) -> dict[str, str]:
    """The headers of a GET to `path` on the node `recipient`: the signature, and the record it covers."""
    record = record_header(signed) if signed is not None else ""
    headers = sign_request(identity, "GET", path, b"", recipient, bound=record)
    if record:
        headers[RECORD_HEADER] = record
    return headers


async def recipient_id(session: aiohttp.ClientSession) -> bytes:
    """The node the request goes to: its id is part of what the farmer signs."""
    document = await _json(session, "/api/address")
    try:
        return parse_node_id(str(document.get("address")))
    except InvalidAddress as error:
        raise CliError(f"the node gave a bad address: {error}") from error


async def current_record(session: aiohttp.ClientSession, farmer_id: bytes) -> tuple[Value, FarmerRecord] | None:
    """The farmer's signed record as the mesh holds it, checked here as every node checks it."""
    async with session.get(f"/api/farmer/{farmer_id.hex()}/record") as response:
        text = await response.text()
        if response.status == 404:
            return None
        if response.status >= 400:
            raise CliError(f"{response.status}: {error_of(text)}")
    try:
        value = value_from_json(json.loads(text))
        check_value(farmer_key(farmer_id), value)
    except (ValueError, ValueJsonError, InvalidValue) as error:
        raise CliError(f"the node gave a record that does not check: {error}") from error
    return find_record([value], farmer_id)


async def _json(session: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    async with session.get(path) as response:
        text = await response.text()
        if response.status >= 400:
            raise CliError(f"{response.status}: {error_of(text)}")
    try:
        document = json.loads(text)
    except ValueError as error:
        raise CliError(f"{path}: the node's answer is not JSON") from error
    if not isinstance(document, dict):
        raise CliError(f"{path}: the node's answer is not a JSON object")
    return document


async def _print(session: aiohttp.ClientSession, path: str, headers: dict[str, str] | None = None) -> int:
    async with session.get(path, headers=headers) as response:
        text = await response.text()
        if response.status >= 400:
            raise CliError(f"{response.status}: {error_of(text)}")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
