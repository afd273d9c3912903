"""Entry point of the `dhtmesh` console script: argument parsing and the single-line error contract."""

import argparse
import sys

from dhtmesh import __version__
from dhtmesh.cli import blob, client, farmer, identity, logs, run
from dhtmesh.cli.errors import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dhtmesh", description="A Kademlia DHT node with an HTTP proxy.")
    parser.add_argument("--version", action="version", version=f"dhtmesh {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="run a node and its proxy")
    run.add_arguments(run_parser)
    run_parser.add_argument("-v", "--verbose", action="count", default=0, dest="run_verbose")
    run_parser.set_defaults(handler=run.command)

    put_parser = commands.add_parser("put", help="put a value through a node's proxy")
    client.add_put_arguments(put_parser)
    put_parser.set_defaults(handler=client.put)

    get_parser = commands.add_parser("get", help="get a key's values (one JSON per line)")
    client.add_reading_arguments(get_parser)
    get_parser.set_defaults(handler=client.get)

    listen_parser = commands.add_parser("listen", help="print a key's values as they arrive")
    client.add_reading_arguments(listen_parser)
    listen_parser.add_argument("--count", type=int, help="stop after this many lines")
    listen_parser.set_defaults(handler=client.listen)

    info_parser = commands.add_parser("info", help="show a node's info")
    client.add_url(info_parser)
    info_parser.set_defaults(handler=client.info)

    farmer_parser = commands.add_parser("farmer", help="register and keep a farmer online through a node's proxy")
    farmer.add_arguments(farmer_parser)
    farmer_parser.set_defaults(handler=farmer.command)

    blob_parser = commands.add_parser("blob", help="store a file on the mesh's farmers, or fetch one back")
    blob.add_arguments(blob_parser)
    blob_parser.set_defaults(handler=blob.command)

    identity_parser = commands.add_parser("identity", help="create or show an identity")
    identity.add_arguments(identity_parser)
    identity_parser.set_defaults(handler=identity.command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose + getattr(args, "run_verbose", 0))
    try:
        return args.handler(args)
    except CliError as error:
        print(f"dhtmesh: error: {error}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    sys.exit(main())
