"""`dhtmesh job submit|status|results|cancel|close|list`: a job's owner deploys and follows dcp-rest jobs
through any node's proxy.

The owner is the identity given with `-i`, else the node's own: the identity in the node's data
directory, used only once it is proven to be that of the node at `--url`. Its key signs the job's
records here (`dhtmesh.client`); the node only checks and stores them.
"""

import argparse
import json
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from dhtmesh.cli.connect import acting_identity, add_acting_identity, as_text, run_client, write
from dhtmesh.cli.errors import CliError
from dhtmesh.cli.url import add_url
from dhtmesh.client import BadJob, Client, SliceRange, opened

FINISHED = "completed"
BAR_WIDTH = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, summary: str, owned: bool, job: bool = True) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.")
        add_url(sub)
        if job:
            sub.add_argument("job_id", metavar="ID", help="the job's id (40 hex, as `job submit` prints it)")
        if owned:
            add_acting_identity(sub, "the job owner")
        return sub

    submit = action("submit", "deploy a job with all its slices, and close it; prints its id", True, job=False)
    submit.add_argument("--function", required=True, metavar="FILE|TEXT", help="the work function: a file, or its text")
    submit.add_argument("--slices", required=True, metavar="JSON|@FILE", help="the slices' data: a JSON array")
    submit.add_argument("--args", metavar="JSON", default="[]", help="the function's arguments after the datum")
    submit.add_argument("--redundancy", type=int, default=1, metavar="R", help="workers that compute each slice")
    submit.add_argument("--slice-timeout", type=int, metavar="MS", help="a slice's time limit, in ms")
    submit.add_argument("--private", action="store_true", help="results sealed to the owner (see the README)")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job is finished (a progress bar on a terminal's stderr), then print its status; "
        "exit code 1 unless it completed",
    )
    action("status", "a job's status, as JSON", False)
    results = action("results", "a job's results, as JSON (a private job's opened with the owner's key)", False)
    results.add_argument(
        "--range", action="append", dest="ranges", metavar="M-N", help="only slices M to N (repeatable)"
    )
    add_acting_identity(results, "the job owner")
    cancel = action("cancel", "cancel a job: workers stop its slices", True)
    cancel.add_argument("--reason", default="", help="why, as the job's status says it")
    action("close", "close a job: it has all its slices", True)
    action("list", "the owner's jobs, as JSON", True, job=False)


def command(args: argparse.Namespace) -> int:
    if args.action == "submit":
        job = _submission(args)
        return run_client(args.url, lambda client: _submit(client, args, job))
    if args.action == "results":
        ranges = [_range(text) for text in args.ranges or ()]
        return run_client(args.url, lambda client: _results(client, args, ranges))
    if args.action == "status":
        return run_client(args.url, lambda client: _show(client.job_status(args.job_id)))
    return run_client(args.url, lambda client: _owned(client, args))


async def _show(answer: Awaitable[Any]) -> int:
    return write(as_text(await answer))


async def _results(client: Client, args: argparse.Namespace, ranges: list[SliceRange]) -> int:
    """The results; a private job's opened with its owner's key."""
    document = await client.job_results(args.job_id, ranges)
    if (await client.job_status(args.job_id)).get("private"):
        document = opened(await acting_identity(client, args, "the job owner"), args.job_id, document)
    return write(as_text(document))


async def _owned(client: Client, args: argparse.Namespace) -> int:
    owner = await acting_identity(client, args, "the job owner")
    if args.action == "list":
        return write(as_text(await client.jobs(owner)))
    if args.action == "close":
        return write(as_text(await client.close_job(owner, args.job_id)))
    await client.cancel_job(owner, args.job_id, args.reason)
    return write(f"cancelled {args.job_id}")


# ---- submit -------------------------------------------------------------------------------------


def _submission(args: argparse.Namespace) -> dict[str, Any]:
    """The job `submit` deploys, read from its arguments (every mistake said before connecting)."""
    slices = _json_argument("--slices", _text_or_file(args.slices))
    arguments = _json_argument("--args", args.args)
    if not isinstance(slices, list) or not isinstance(arguments, list):
        raise CliError("--slices and --args are JSON arrays")
    return {
        "function": _function(args.function),
        "slices": slices,
        "args": arguments,
        "redundancy": args.redundancy,
        "slice_timeout_ms": args.slice_timeout,
        "private": args.private,
    }


def _function(given: str) -> str:
    """The file's text when `given` names one, else `given`: a function's text is no file name (too long
    for one, or holding characters none has)."""
    try:
        is_file = Path(given).is_file()
    except (OSError, ValueError):
        is_file = False
    return _read(Path(given)) if is_file else given


def _text_or_file(given: str) -> str:
    """`@FILE`'s text, else the text given."""
    return _read(Path(given[1:])) if given.startswith("@") else given


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from error


def _json_argument(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise CliError(f"{name} is not JSON: {error}") from error


async def _submit(client: Client, args: argparse.Namespace, job: dict[str, Any]) -> int:
    owner = await acting_identity(client, args, "the job owner")
    try:
        job_id = await client.deploy_job(owner, **job)
    except BadJob as error:
        raise CliError(f"not a job: {error}") from error
    write(job_id)  # said at once: whatever happens next, the job exists
    await client.close_job(owner, job_id)
    if not args.wait:
        return 0
    await _follow(client, job_id, len(job["slices"]))
    status = await client.job_status(job_id)
    write(as_text(status))
    return 0 if status.get("status") == FINISHED else 1


async def _follow(client: Client, job_id: str, total: int) -> None:
    """Until the job is finished: its completed slices as a bar on stderr, when stderr is a terminal."""
    bar = Bar(total) if sys.stderr.isatty() else None
    done: set[int] = set()
    try:
        async for line in client.listen_results(job_id):
            done.add(line.get("sliceNumber", 0))
            if bar is not None:
                bar.show(len(done))
    finally:
        if bar is not None:
            bar.end(len(done))


class Bar:
    """`[####    ] 312/500` on stderr, redrawn at most ten times a second, ended once with a newline."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._drawn = 0.0

    def show(self, done: int) -> None:
        now = time.monotonic()
        if now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(done)

    def end(self, done: int) -> None:
        self._draw(done)
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self, done: int) -> None:
        filled = BAR_WIDTH * min(done, self._total) // max(self._total, 1)
        sys.stderr.write(f"\r[{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {done}/{self._total}")
        sys.stderr.flush()


# ---- arguments ----------------------------------------------------------------------------------


def _range(text: str) -> SliceRange:
    """`M-N` (or `N`: one slice) as slice numbers from 1."""
    first, _, last = text.partition("-")
    try:
        numbers = (int(first), int(last or first))
    except ValueError as error:
        raise CliError(f"--range {text}: give slice numbers M-N, from 1") from error
    if not 1 <= numbers[0] <= numbers[1]:
        raise CliError(f"--range {text}: give slice numbers M-N, from 1, M at most N")
    return numbers
