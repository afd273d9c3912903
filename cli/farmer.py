"""`dhtmesh farmer register|ping|height|bandwidth|show|audits|online|total`: a farmer identity talks to
any node's proxy, as dataserv-client talked to dataserv.

The farmer is the identity given with `-i`, else the node's own: the identity in the node's data
directory, used only once it is proven to be that of the node at `--url`. Nothing here creates a key.

A change is made on the farmer's side (`dhtmesh.client`): the client reads its current signed record
from the node, applies dataserv's rule for the request, signs the new state and sends it with a
signed request. The node only checks and stores it, so it never needs (or gets) the farmer's key.
"""

import argparse
from dataclasses import asdict

from dhtmesh.cli.connect import acting_identity, add_acting_identity, as_text, run_client, write
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.url import add_url
from dhtmesh.client import Client, NotRegistered
from dhtmesh.crypto.addresses import InvalidAddress, address_payload, parse_node_id
from dhtmesh.crypto.identity import Identity

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
    add_acting_identity(parser, "the farmer")
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
    return run_client(args.url, lambda client: _command(client, args))


async def _command(client: Client, args: argparse.Namespace) -> int:
    if args.action == "online":
        return write(as_text({"farmers": await client.online_farmers()}) if args.json else await client.online())
    if args.action == "total":
        return write(as_text(asdict(await client.total())))
    if args.action in ("show", "audits"):
        farmer_id = _farmer_id(args.id) if args.id else (await acting_identity(client, args, "the farmer")).node_id
        shown = await (client.farmer_audits(farmer_id) if args.action == "audits" else client.farmer(farmer_id))
        return write(as_text(shown))
    return await _change(client, await acting_identity(client, args, "the farmer"), args)


def _farmer_id(text: str) -> bytes:
    try:
        return parse_node_id(text)
    except InvalidAddress as error:
        raise CliError(f"--id: {error}") from error


async def _change(client: Client, farmer: Identity, args: argparse.Namespace) -> int:
    """The farmer's change, made on its side by the client (which reads, signs and sends it)."""
    try:
        if args.action == "register":
            return write(as_text(await client.register(farmer, args.payout, args.ip)))
        if args.action == "ping":
            return write(await client.ping(farmer, args.ip))
        if args.action == "height":
            (height,) = args.numbers
            return write(await client.set_height(farmer, height, args.ip))
        upload, download = args.numbers
        return write(await client.set_bandwidth(farmer, upload, download, args.ip))
    except NotRegistered as error:
        raise CliError(f"farmer {error.farmer_id.hex()} is not registered (run: dhtmesh farmer register)") from error
