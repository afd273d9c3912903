"""One node per data directory: `dhtmesh run` holds an exclusive lock on `DIR/lock` while it runs.

Two nodes on one directory would share one node id and one SQLite file. The lock is `flock`'s, which
the kernel releases when the process ends however it ends, so a killed node never leaves a stale lock.
"""

import fcntl
import os
from pathlib import Path
from typing import IO

from dhtmesh.cli.errors import CliError

LOCK_FILE = "lock"


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Lock `data_dir` for this process; keep the returned file open for as long as the node runs."""
    path = data_dir / LOCK_FILE
    try:
        handle = path.open("a+")
    except OSError as error:
        raise CliError(f"cannot use data directory {data_dir}: {error.strerror or error}") from error
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        by = f" (pid {holder})" if holder.isdecimal() else ""
        message = f"data directory {data_dir} is in use by another dhtmesh run{by}: give another --persist DIR"
        raise CliError(message) from error
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")  # for the message another run gives
    handle.flush()
    return handle
