"""`dhtmesh user add NAME`: create a mesh-wide account (the streams API's users) through any node's proxy.

The password comes from `$DHTMESH_PASSWORD`, else a prompt (typed twice), never from the command line
(where other users could read it). The account key is derived from it here and signs the record; the
node only gets the signed record.
"""

import argparse
import getpass
import os

from dhtmesh.cli.connect import as_text, run_client, write
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.url import add_url
from dhtmesh.client import Client
from dhtmesh.client.accounts import add_user, valid_name

PASSWORD_VARIABLE = "DHTMESH_PASSWORD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="create an account (the same name and password again re-publishes it)",
        description=f"Create an account. The password is read from ${PASSWORD_VARIABLE}, else prompted for.",
    )
    add_url(add)
    add.add_argument("name", metavar="NAME", help="the user name: 1 to 64 of A-Z a-z 0-9 . _ @ -")


def command(args: argparse.Namespace) -> int:
    if not valid_name(args.name):
        raise CliError("a user name is 1 to 64 of A-Z a-z 0-9 . _ @ -")
    password = _password()

    async def add(client: Client) -> int:
        return write(as_text(await add_user(client.transport, args.name, password)))

    return run_client(args.url, add)


def _password() -> str:
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is None:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the passwords differ")
    if not password:
        raise CliError("the password is empty")
    return password
