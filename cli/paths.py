"""Where a node keeps its data by default: a per-user data directory (XDG), and the files in it."""

import os
from pathlib import Path

from dhtmesh.cli.errors import CliError
from dhtmesh.crypto.identity import Identity, IdentityError, is_password_protected, load_identity, save_identity

IDENTITY_FILE = "identity.json"
PEERS_FILE = "peers.json"
PASSWORD_ENV = "DHTMESH_PASSWORD"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "dhtmesh"


def identity_path(data_dir: Path, explicit: str | None) -> Path:
    return Path(explicit) if explicit else data_dir / IDENTITY_FILE


def read_identity(path: Path) -> Identity:
    password = os.environ.get(PASSWORD_ENV) if is_password_protected(path) else None
    try:
        return load_identity(path, password)
    except IdentityError as error:
        raise CliError(str(error)) from error


def load_or_create_identity(path: Path, explicit: bool) -> Identity:
    """An explicitly named identity must exist; the default one is created on first run."""
    if path.exists() or explicit:
        return read_identity(path)
    identity = Identity.generate()
    try:
        save_identity(identity, path, os.environ.get(PASSWORD_ENV) or None)
    except OSError as error:
        raise CliError(f"cannot write identity {path}: {error}") from error
    return identity
