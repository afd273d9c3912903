"""How a client command talks to a node's proxy: through one `dhtmesh.client.Client`, its failures
said as one line (`CliError`), Ctrl-C as exit code 130; and what it prints of an answer."""

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dhtmesh.api.documents import json_line
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.paths import IDENTITY_FILE, default_data_dir, read_identity
from dhtmesh.client import Client, ClientError, TimedOut, Unreachable
from dhtmesh.crypto.identity import Identity


def run_client(url: str, action: Callable[[Client], Awaitable[int]]) -> int:
    """Run `action` with a client of the proxy at `url`; its exit code."""

    async def main() -> int:
        async with Client(url) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except TimedOut as error:
        raise CliError(f"the node's proxy did not answer in time: {error}") from error
    except Unreachable as error:
        raise CliError(f"cannot reach the node's proxy: {error}") from error
    except ClientError as error:  # an HTTP error reads `STATUS: the proxy's err`
        raise CliError(str(error)) from error
    except KeyboardInterrupt:
        return 130


def as_text(document: Any) -> str:
    """A document as the proxy wrote it (one line, keys sorted), so that it prints byte for byte."""
    return json_line(document).decode()


def write(text: str) -> int:
    """Print `text` (on a line of its own) at once; exit code 0."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    return 0


def add_acting_identity(parser: argparse.ArgumentParser, role: str) -> None:
    """The `-i` and `--persist` options that name who acts (`acting_identity`)."""
    parser.add_argument(
        "-i",
        "--identity",
        metavar="FILE",
        help=f"{role}'s identity (default: the node's own, from its data directory, when it is the node at --url)",
    )
    parser.add_argument(
        "--persist", metavar="DIR", help="the node's data directory, where its identity is (default: as `run`)"
    )


async def acting_identity(client: Client, args: argparse.Namespace, role: str) -> Identity:
    """Who acts (`role`: "the farmer", "the job owner"): `-i`'s identity; else the node's own, read from
    its data directory (`--persist`), once the node at `--url` proves to be the one it belongs to (a
    client command never makes a new key)."""
    if args.identity:
        return read_identity(Path(args.identity))
    path = (Path(args.persist) if args.persist else default_data_dir()) / IDENTITY_FILE
    if not path.exists():
        raise CliError(
            f"no node identity at {path}: give {role}'s identity with -i FILE (`dhtmesh identity new -i FILE`"
            " makes one), or the node's data directory with --persist DIR"
        )
    identity = read_identity(path)
    node_id = await client.node_id()
    if identity.node_id != node_id:
        raise CliError(
            f"{path} is node {identity.node_id.hex()}, not the node at {args.url} ({node_id.hex()}):"
            f" give {role}'s identity with -i FILE, or that node's data directory with --persist DIR"
        )
    return identity
