"""`dhtmesh blob put FILE` and `dhtmesh blob get ID [-o FILE]`: move a blob through a node's proxy,
streamed both ways, with a progress bar on stderr. A download goes to a temporary file renamed into
place once every byte has arrived, so an interrupted one never leaves a truncated FILE."""

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import aiohttp

from dhtmesh.cli.client import error_of, run_coroutine
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.url import add_url
from dhtmesh.node.records.blob import blob_id_from_hex

PIECE = 1024 * 1024
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=300)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    put_parser = actions.add_parser(
        "put", help="store a file as a blob; prints its id", description="Store a file as a blob; prints its id."
    )
    put_parser.add_argument("file", type=Path, metavar="FILE", help="the file to store")
    get_parser = actions.add_parser("get", help="fetch a blob by id", description="Fetch a blob by its id.")
    get_parser.add_argument("blob_id", metavar="ID", help="the blob's id (64 hex, as `blob put` prints it)")
    get_parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (default: stdout)")
    for sub in (put_parser, get_parser):
        add_url(sub)
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


class Progress:
    """A one-line bar on stderr, redrawn at most ten times a second, and ended (with a newline) once."""

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._drawn = 0.0
        self._started = time.monotonic()
        self._open = False  # a bar is on the line, not ended yet

    def end(self) -> None:
        if self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._open = False

    def show(self, done: int, total: int | None, final: bool = False) -> None:
        now = time.monotonic()
        if self._quiet or (not final and now - self._drawn < 0.1):
            return
        self._drawn = now
        rate = done / max(now - self._started, 1e-6) / 2**20
        if total:
            filled = int(30 * done / total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * done // total:3d}%"
        else:
            bar = "[unknown size]"
        sys.stderr.write(f"\r{bar} {done / 2**20:.1f}/{(total or done) / 2**20:.1f} MiB {rate:.1f} MiB/s")
        self._open = True
        if final:
            self.end()
        else:
            sys.stderr.flush()


def command(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    try:
        return _transfer(args, progress)
    finally:
        progress.end()  # an error or Ctrl-C is said on a line of its own, not after the bar


def _transfer(args: argparse.Namespace, progress: Progress) -> int:
    if args.action == "put":
        try:
            size = args.file.stat().st_size
            source = args.file.open("rb")
        except OSError as error:
            raise CliError(f"cannot read {args.file}: {error.strerror or error}") from error
        with source:
            return run_coroutine(put(args.url, source, size, progress))
    if blob_id_from_hex(args.blob_id) is None:
        raise CliError("a blob id is 64 lowercase hex characters")
    if args.output is None:
        return run_coroutine(get(args.url, args.blob_id, sys.stdout.buffer, progress))
    partial = args.output.with_name(f".{args.output.name}.partial")
    try:
        with partial.open("wb") as sink:
            code = run_coroutine(get(args.url, args.blob_id, sink, progress))
        if code == 0:  # not when interrupted
            partial.replace(args.output)
    except OSError as error:
        raise CliError(f"cannot write {args.output}: {error.strerror or error}") from error
    finally:
        partial.unlink(missing_ok=True)
    return code


async def _file_pieces(source: BinaryIO, progress: Progress, total: int) -> AsyncIterator[bytes]:
    sent = 0
    while piece := await asyncio.to_thread(source.read, PIECE):
        sent += len(piece)
        progress.show(sent, total)
        yield piece
    progress.show(sent, total, final=True)


async def put(url: str, source: BinaryIO, size: int, progress: Progress) -> int:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    async with (
        aiohttp.ClientSession(timeout=_NO_TIMEOUT) as session,
        session.post(f"{url}/api/blob", data=_file_pieces(source, progress, size), headers=headers) as response,
    ):
        text = await response.text()
        if response.status >= 400:
            raise CliError(f"{response.status}: {error_of(text)}")
        sys.stdout.write(text)
        return 0


async def get(url: str, blob_id: str, sink: BinaryIO, progress: Progress) -> int:
    async with (
        aiohttp.ClientSession(timeout=_NO_TIMEOUT) as session,
        session.get(f"{url}/api/blob/{blob_id}") as response,
    ):
        if response.status >= 400:
            raise CliError(f"{response.status}: {error_of(await response.text())}")
        await _copy(response, sink, response.content_length, progress)
        sink.flush()
        return 0


async def _copy(response: aiohttp.ClientResponse, sink: BinaryIO, total: int | None, progress: Progress) -> None:
    received = 0
    try:
        async for piece in response.content.iter_chunked(PIECE):
            sink.write(piece)
            received += len(piece)
            progress.show(received, total)
    except aiohttp.ClientPayloadError as error:
        raise CliError(f"the blob was cut short after {received} bytes (a chunk no holder served?)") from error
    progress.show(received, total, final=True)
    if total is not None and received != total:
        raise CliError(f"the blob ended after {received} of {total} bytes")
