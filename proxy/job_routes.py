"""dcp-rest's job routes (`/api/v0/...`, its shapes): deploy a job, add slices, close, cancel, and read
its status and results, on any node. The mesh does the work (`node/jobs/`); these handlers parse, prove
who asks (`job_auth`), and answer; every refusal goes through the error table (a 4xx, never a 500).

A change is made of records the job's owner signs: carried in the body (`"signed"`: value JSON
documents) when the request is signed with the owner's key, or signed by this node with the identity a
Basic credential unlocked.
"""

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
from aiohttp import web

from dhtmesh.api import paths
from dhtmesh.api.value_json import value_from_json, value_to_json
from dhtmesh.crypto.addresses import node_address
from dhtmesh.crypto.identity import Identity
from dhtmesh.node.jobs import owner
from dhtmesh.node.jobs.service import Jobs
from dhtmesh.node.jobs.view import JobStatus, JobView
from dhtmesh.node.records.job import JOB_ID_SIZE, MAX_BATCHES, JobRecord
from dhtmesh.node.values.value import Value
from dhtmesh.proxy.clients import client_of, client_slot
from dhtmesh.proxy.errors import BadRequest, TooLarge
from dhtmesh.proxy.job_auth import Caller, caller
from dhtmesh.proxy.responses import json_object, json_reply, open_stream
from dhtmesh.proxy.route import FOLLOW_BUDGET, JOB_CHANGES, JOBS, LISTEN_SLOTS, NODE, Route

BODY_LIMIT = 16 * 1024 * 1024  # a job's slices and their signed batches (a deploy of more: then add slices)
READ_BODY_LIMIT = 4096  # a signed read carries no body: it is not waited for at a change's size
BODY_SECONDS = 60
MAX_RANGES = 64
MAX_SIGNED = MAX_BATCHES + 1  # records in one change: a job and its batches
_RANGE = re.compile(r"([0-9]{1,9})-([0-9]{1,9})")
_JOB_ID = re.compile(r"(0x)?([0-9a-fA-F]{40})")


async def _body(request: web.Request, limit: int = BODY_LIMIT) -> bytes:
    """The body, up to `limit` (a job's bodies are larger than the proxy's other routes take)."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"this job request is at most {limit} bytes")
    pieces, size = [], 0
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for piece in request.content.iter_any():  # a read returns what has arrived: read to the end
                size += len(piece)
                if size > limit:
                    raise TooLarge(f"this job request is at most {limit} bytes")
                pieces.append(piece)
    except TimeoutError as error:
        raise BadRequest(f"the body did not arrive within {BODY_SECONDS} s") from error
    return b"".join(pieces)


def _job_id(request: web.Request) -> bytes:
    match = _JOB_ID.fullmatch(request.match_info["job_id"])
    if match is None:
        raise BadRequest(f"a job id is {JOB_ID_SIZE * 2} hex characters")
    return bytes.fromhex(match.group(2))


Sign = Callable[[Identity, Value | None], list[Value]]


async def _records(jobs: Jobs, who: Caller, document: dict, job_id: bytes | None, sign: Sign) -> list[Value]:
    """The owner's records for the change: signed here with an unlocked identity (from the job's latest
    record, once the caller is proven its owner), else carried in the body."""
    if who.identity is not None:
        return sign(who.identity, None if job_id is None else await jobs.owned_record(who.owner_id, job_id))
    signed = document.get("signed")
    if not (isinstance(signed, list) and 0 < len(signed) <= MAX_SIGNED):
        raise BadRequest('a signed request carries the records its owner signed: "signed": [value JSON, ...]')
    return [value_from_json(item) for item in signed]


@asynccontextmanager
async def _change(request: web.Request) -> AsyncIterator[tuple[Jobs, Caller, dict]]:
    """A change's body read, its caller proven, in one of the bounded slots for changes (a body may be
    16 MiB: a few at a time per address, and in all)."""
    with client_slot(request.app[JOB_CHANGES], request, "http_job_changes_refused"):
        prove = await caller(request)  # before the body: a stranger's request waits for nothing
        raw = await _body(request)
        yield request.app[JOBS], prove(raw), json_object(raw, empty={})


# ---- changes ------------------------------------------------------------------------------------


async def deploy(request: web.Request) -> web.Response:
    async with _change(request) as (jobs, who, document):

        def sign(me: Identity, _: Value | None) -> list[Value]:
            return owner.deploy(me, owner.parse_deploy(document))

        job_id = await jobs.deploy(who.owner_id, await _records(jobs, who, document, None, sign))
    return json_reply({"jobId": job_id.hex()}, status=201)


async def add_slices(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    async with _change(request) as (jobs, who, document):
        slices = owner.parse_slices(document) if who.identity is not None else []

        def sign(me: Identity, current: Value | None) -> list[Value]:
            assert current is not None  # a change to a job: its latest record
            return owner.add_slices(me, current, slices)

        added, total = await jobs.add_slices(who.owner_id, job_id, await _records(jobs, who, document, job_id, sign))
    return json_reply({"added": added, "totalSlices": total}, status=201)


async def close_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    async with _change(request) as (jobs, who, document):

        def sign(me: Identity, current: Value | None) -> list[Value]:
            assert current is not None
            return [owner.closed(me, current)]

        values = await _records(jobs, who, document, job_id, sign)
        await jobs.close_job(who.owner_id, job_id, values)
    return json_reply(_status_document(await _view(request, job_id)))


async def cancel_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    async with _change(request) as (jobs, who, document):
        reason = document.get("reason", "")
        if not isinstance(reason, str):
            raise BadRequest("reason is text")

        def sign(me: Identity, current: Value | None) -> list[Value]:
            assert current is not None
            return [owner.cancelled(me, current, reason)]

        await jobs.cancel(who.owner_id, job_id, await _records(jobs, who, document, job_id, sign))
    return web.Response(status=204)


# ---- reading ------------------------------------------------------------------------------------


def _status_json(job: JobRecord, status: JobStatus) -> dict:
    return {
        "jobId": job.job_id.hex(),
        "owner": job.owner_id.hex(),
        "status": status.status,
        "totalSlices": status.total,
        "activeSlices": status.active,
        "completedSlices": status.completed,
        "failedSlices": status.failed,
        "totalCPUTime": round(status.cpu_seconds, 3),
        "closed": job.closed,
        "reason": job.reason,
        "redundancy": job.spec.redundancy,
        "private": job.spec.private,
        "public": orjson.loads(job.spec.public),
        "errors": [{"sliceNumber": e.number, "error": e.error, "worker": e.worker.hex()} for e in status.errors],
    }


def _view(request: web.Request, job_id: bytes) -> Awaitable[JobView]:
    """The job's view; a new one only within the caller's budget of result keys to follow (a job
    listing many batches costs a reading node one lookup and one subscription per key)."""
    return request.app[JOBS].view(job_id, _admit(request))


def _admit(request: web.Request) -> Callable[[int], bool]:
    client = client_of(request)
    return lambda keys: request.app[FOLLOW_BUDGET].take(client, keys)


def _status_document(view: JobView) -> dict:
    return _status_json(view.job, view.status())


async def job_status(request: web.Request) -> web.Response:
    return json_reply(_status_document(await _view(request, _job_id(request))))


async def job_record(request: web.Request) -> web.Response:
    return json_reply(value_to_json(await request.app[JOBS].record(_job_id(request))))


def _ranges(request: web.Request) -> list[tuple[int, int]] | None:
    """Every `range=m-n` (inclusive, 1-based); None for all slices."""
    texts = request.query.getall("range", [])
    if not texts:
        return None
    if len(texts) > MAX_RANGES:
        raise BadRequest(f"at most {MAX_RANGES} ranges")
    ranges = []
    for text in texts:
        match = _RANGE.fullmatch(text)
        if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise BadRequest(f"a range is m-n, 1 <= m <= n: {text[:40]!r}")
        ranges.append((int(match.group(1)), int(match.group(2))))
    return ranges


def _results_json(view: JobView, ranges: list[tuple[int, int]] | None) -> dict:
    status = view.status()
    results = [{"sliceNumber": n, "value": orjson.Fragment(value)} for n, value in view.values(ranges)]
    return {
        "totalSlices": status.total,
        "completedSlices": status.completed,
        "activeSlices": status.active,
        "results": results,
    }


async def job_results(request: web.Request) -> web.Response:
    ranges = _ranges(request)
    return json_reply(_results_json(await _view(request, _job_id(request)), ranges))


async def job_result(request: web.Request) -> web.Response:
    text = request.match_info["slice_number"]
    if not (text.isdigit() and len(text) <= 9 and int(text) >= 1):
        raise BadRequest("a slice number is a whole number from 1")
    number = int(text)
    return json_reply(_results_json(await _view(request, _job_id(request)), [(number, number)]))


async def listen_results(request: web.Request) -> web.StreamResponse:
    view = await _view(request, _job_id(request))
    with client_slot(request.app[LISTEN_SLOTS], request, "http_listens_refused"):
        response = await open_stream(request)
        async for number, value in view.accepted():
            await response.write(orjson.dumps({"sliceNumber": number, "value": orjson.Fragment(value)}) + b"\n")
        await response.write_eof()
        return response


async def list_jobs(request: web.Request) -> web.Response:
    prove = await caller(request)
    who = prove(await _body(request, READ_BODY_LIMIT))
    listed = await request.app[JOBS].jobs_of(who.owner_id, _admit(request))
    return json_reply([_status_json(job, status) for job, status in listed])


async def count_jobs(request: web.Request) -> web.Response:
    prove = await caller(request)
    who = prove(await _body(request, READ_BODY_LIMIT))
    return json_reply({"jobCount": await request.app[JOBS].count_of(who.owner_id)})


async def accounts(request: web.Request) -> web.Response:
    """The identities this node holds: its own (there is no bank: balance 0)."""
    node = request.app[NODE]
    return json_reply([{"name": "node", "address": node_address(node.node_id), "balance": 0}])


_AUTH = {"Authorization": "`Ed25519 ...` (with `Date`, a signed request) or `Basic base64(identity JSON:password)`"}
_CHANGE = {400: "bad body, or records that are not the change", 401: "missing or bad credential", 403: "not the owner"}
_READ = {400: "bad job id", 404: "no such job"}

JOB_ROUTES: list[Route] = [
    Route(
        "POST", paths.JOB_NEW, deploy,
        "deploy a job: its work function (JavaScript), slices and options; the function must compile",
        "dcp-rest's `{work: {function}, slices?, args?, redundancy?, sliceTimeoutMs?, maxRetries?, public?}`; "
        "signed requests add `signed`: the owner's records",
        {201: "`{jobId}`", **_CHANGE}, headers=_AUTH,
    ),
    Route(
        "POST", paths.JOB_SLICES, add_slices, "add slices to an open job (numbers continue the sequence)",
        "`{sliceData: [...]}` (signed requests: and `signed`)",
        {201: "`{added, totalSlices}`", **_CHANGE, 404: "no such job", 409: "the job is closed"}, headers=_AUTH,
    ),
    Route(
        "POST", paths.JOB_CLOSE, close_job, "close a job: no more slices; it completes once all have finished",
        "empty (signed requests: `signed`)", {200: "the job's status", **_CHANGE, 404: "no such job"}, headers=_AUTH,
    ),
    Route(
        "DELETE", paths.JOB, cancel_job, "cancel a job: its running slices stop on the workers",
        "`{reason?}` (signed requests: and `signed`)", {204: "cancelled", **_CHANGE, 404: "no such job"},
        media=None, headers=_AUTH,
    ),
    Route("GET", paths.JOB, job_status, "the job's status", replies={200: "the status", **_READ}),
    Route("GET", paths.JOB_STATUS, job_status, "the job's status", replies={200: "the status", **_READ}),
    Route(
        "GET", paths.JOB_RECORD, job_record, "the job's latest signed record (its owner's next change follows it)",
        replies={200: "value JSON", **_READ},
    ),
    Route(
        "GET", paths.JOB_RESULTS, job_results, "completed slices' results, in order; `range=m-n` (repeatable)",
        replies={200: "`{totalSlices, completedSlices, activeSlices, results}`", **_READ},
    ),
    Route(
        "GET", paths.JOB_RESULT, job_result, "one slice's result, if completed",
        replies={200: "`{totalSlices, completedSlices, activeSlices, results}`", **_READ},
    ),
    Route(
        "GET", paths.JOB_LISTEN, listen_results,
        "each slice's result as it completes (those done first); ends when the job is finished",
        replies={200: "one `{sliceNumber, value}` per line", **_READ, 429: "too many streams"}, streams=True,
    ),
    Route(
        "GET", paths.JOBS, list_jobs, "the caller's jobs (the newest 32), with their status",
        replies={200: "a list of statuses", 401: "missing or bad credential"}, headers=_AUTH, json_type="array",
    ),
    Route(
        "GET", paths.JOBS_COUNT, count_jobs, "how many jobs the caller has",
        replies={200: "`{jobCount}`", 401: "missing or bad credential"}, headers=_AUTH,
    ),
    Route(
        "GET", paths.ACCOUNTS, accounts, "the identities this node holds",
        replies={200: "`[{name, address, balance}]`"}, json_type="array",
    ),
]  # fmt: skip
