"""`dhtmesh blob put FILE` and `dhtmesh blob get ID [-o FILE]`: move a blob through a node's proxy (with
`dhtmesh.client`), streamed both ways, with a progress bar on stderr. A download goes to a temporary file renamed into
place once every byte has arrived, so an interrupted one never leaves a truncated FILE."""

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

from dhtmesh.cli.connect import as_text, run_client
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.url import add_url
from dhtmesh.client import Client
from dhtmesh.node.records.blob import blob_id_from_hex

PIECE = 1024 * 1024


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
            return run_client(args.url, lambda client: put(client, source, size, progress))
    if blob_id_from_hex(args.blob_id) is None:
        raise CliError("a blob id is 64 lowercase hex characters")
    if args.output is None:
        return run_client(args.url, lambda client: get(client, args.blob_id, sys.stdout.buffer, progress))
    partial = args.output.with_name(f".{args.output.name}.partial")
    try:
        with partial.open("wb") as sink:
            code = run_client(args.url, lambda client: get(client, args.blob_id, sink, progress))
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


async def put(client: Client, source: BinaryIO, size: int, progress: Progress) -> int:
    stored = await client.put_blob(_file_pieces(source, progress, size), size)
    sys.stdout.write(as_text(asdict(stored)))
    return 0


async def get(client: Client, blob_id: str, sink: BinaryIO, progress: Progress) -> int:
    async with client.open_blob(blob_id) as download:
        received = 0
        async for piece in download.pieces(PIECE):
            sink.write(piece)
            received += len(piece)
            progress.show(received, download.length)
        progress.show(received, download.length, final=True)
    sink.flush()
    return 0
