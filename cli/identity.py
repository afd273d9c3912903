"""`dhtmesh identity new|show`: create an Ed25519 identity file, or print its node id and public key."""

import argparse
import os
from pathlib import Path

from dhtmesh.cli.errors import CliError
from dhtmesh.cli.paths import PASSWORD_ENV, default_data_dir, identity_path, read_identity
from dhtmesh.crypto.identity import Identity, save_identity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["new", "show"], help="new: create one; show: print its node id and key")
    parser.add_argument(
        "-i", "--identity", metavar="FILE", help="identity file (default: the node's, in the data directory of `run`)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing identity (new)")
    parser.add_argument(
        "--password", action="store_true", help=f"protect the new identity with the password in ${PASSWORD_ENV}"
    )


def command(args: argparse.Namespace) -> int:
    path = identity_path(default_data_dir(), args.identity)
    if args.action == "new":
        identity = _create(path, args.force, args.password)
    else:
        identity = read_identity(path)
    print(f"node_id {identity.node_id.hex()}")
    print(f"public_key {identity.public_key.hex()}")
    print(f"file {path}")
    return 0


def _create(path: Path, force: bool, protect: bool) -> Identity:
    if path.exists() and not force:
        raise CliError(f"{path} already exists (use --force to replace it)")
    password = os.environ.get(PASSWORD_ENV) if protect else None
    if protect and not password:
        raise CliError(f"--password needs the password in ${PASSWORD_ENV}")
    identity = Identity.generate()
    try:
        save_identity(identity, path, password)
    except OSError as error:
        raise CliError(f"cannot write {path}: {error}") from error
    return identity
