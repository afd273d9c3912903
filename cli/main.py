"""Entry point of the `dhtmesh` console script: argument parsing, help, and the single-line error contract."""

import argparse
import sys
from collections.abc import Callable

from dhtmesh import __version__
from dhtmesh.cli import blob, client, farmer, identity, job, logs, run, user
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.url import add_url, proxy_url

KEYS = (
    "KEY is any string, hashed with SHA-1 as OpenDHT's clients hash it (a 40-hex KEY is the hash itself), "
    "so curl users reach the same values at /key/<sha1 of KEY>."
)
VERBOSE_HELP = "more logging: -v info, -vv debug (default: warnings only)"


class HelpFormatter(argparse.HelpFormatter):
    """Says each option's default, unless its help says it already or there is none worth saying; wraps
    a description to the terminal, but keeps a text of several lines (a table of actions) as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return text if "\n" in text else super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default in (None, [], "", argparse.SUPPRESS) or action.nargs == 0  # flags, counters
        if quiet or not action.option_strings or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: shows defaults, and remembers itself, so that an unknown argument is
    reported with the usage of the command it was given to."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.set_defaults(command_parser=self)


def build_parser() -> Parser:
    parser = Parser(prog="dhtmesh", description="A Kademlia DHT node with an OpenDHT-compatible HTTP proxy.")
    parser.add_argument("--version", action="version", version=f"dhtmesh {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, details: str, arguments: Callable, handler: Callable, **extra: str) -> Parser:
        description = f"{summary[0].upper()}{summary[1:]}. {details}"
        sub = commands.add_parser(name, help=summary, description=description, **extra)
        arguments(sub)
        sub.set_defaults(handler=handler)
        return sub

    run_parser = command(
        "run",
        "run a node and its proxy",
        "Serves until SIGINT or SIGTERM; once serving, prints `ready node_id=<hex> udp=<host:port> proxy=<url>`. "
        "Its identity, values and saved peers live in --persist DIR (default $XDG_DATA_HOME/dhtmesh, else "
        "~/.local/share/dhtmesh), which one node uses at a time.",
        run.add_arguments,
        run.command,
    )
    run_parser.add_argument("-v", "--verbose", action="count", default=0, dest="run_verbose", help=VERBOSE_HELP)
    command(
        "put",
        "put a value through a node's proxy",
        f"Prints the stored value. {KEYS} With -i the value is signed here, with your identity.",
        client.add_put_arguments,
        client.put,
    )
    command(
        "sign",
        "put a value the node signs with its own identity",
        f"Prints the stored value. {KEYS}",
        client.add_sign_arguments,
        client.sign,
    )
    command(
        "encrypt",
        "put a value sealed to a recipient, signed by the node",
        f"Only the holder of the recipient's identity can read it (`dhtmesh get -i FILE`). {KEYS}",
        client.add_encrypt_arguments,
        client.encrypt,
    )
    command(
        "cancel",
        "cancel a permanent put",
        "The node that took the put stops re-announcing the value, which then expires.",
        client.add_cancel_arguments,
        client.cancel,
    )
    command(
        "get",
        "print a key's values",
        f"One line each: id, signer, data as text (or base64 when binary); --json prints the proxy's JSON. {KEYS}",
        client.add_reading_arguments,
        client.get,
    )
    listen_parser = command(
        "listen",
        "print a key's values, then new ones as they arrive",
        f"Lines as `get` prints them; expired values are marked `expired=true`. Runs until Ctrl-C. {KEYS}",
        client.add_reading_arguments,
        client.listen,
    )
    listen_parser.add_argument("--count", type=int, help="stop after this many values")
    command("info", "show a node's info", "The node's /node/info, as JSON.", add_url, client.info)
    command(
        "farmer",
        "act as a farmer through any node's proxy",
        "Farmer records and audits, as dataserv kept them, in the mesh.",
        farmer.add_arguments,
        farmer.command,
        epilog=farmer.ACTIONS_HELP,
    )
    command(
        "blob",
        "store a file on the mesh's farmers, or fetch one back",
        "With a progress bar on stderr (-q: none).",
        blob.add_arguments,
        blob.command,
    )
    command(
        "job",
        "deploy and follow jobs computed by the mesh's workers",
        "dcp-rest's jobs: a JavaScript work function over slices of JSON data, signed by the job's owner.",
        job.add_arguments,
        job.command,
    )
    command(
        "user",
        "create a mesh-wide account for the streams API",
        "Its key is derived from the password here (Argon2id); the node gets only the signed record.",
        user.add_arguments,
        user.command,
    )
    command(
        "identity",
        "create or show an identity",
        "An Ed25519 key pair; its node id is the SHA-1 of the public key.",
        identity.add_arguments,
        identity.command,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logs.configure(args.verbose + getattr(args, "run_verbose", 0))
    try:
        if "url" in vars(args):
            args.url = proxy_url(args.url)
        return args.handler(args)
    except CliError as error:
        print(f"dhtmesh: error: {error}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    sys.exit(main())
