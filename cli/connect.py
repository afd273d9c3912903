"""How a client command talks to a node's proxy: through one `dhtmesh.client.Client`, its failures
said as one line (`CliError`), Ctrl-C as exit code 130; and what it prints of an answer."""

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from dhtmesh.api.documents import json_line
from dhtmesh.cli.errors import CliError
from dhtmesh.client import Client, ClientError, TimedOut, Unreachable


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
