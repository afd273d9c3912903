"""What a job's owner asks for and signs: dcp-rest's request bodies read into a spec and slices
(`parse_deploy`, `parse_slices`), and the records the owner signs to deploy a job, add slices, close or
cancel it (`deploy`, `add_slices`, `closed`, `cancelled`).

The owner's key signs every one of them, so they are made where the key is: in the client (a request
signed with `Authorization: Ed25519`, which carries them) or in the node that unlocked the owner's
identity file for a Basic-authenticated request (dcp-rest's way). Slices are cut into batches so that
a job spreads over many workers (about `SPREAD` batches) and a batch is one DHT value.
"""

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TypeVar

import orjson

from dhtmesh.crypto.identity import Identity
from dhtmesh.node.errors import ServiceError
from dhtmesh.node.records.job import (
    BATCH,
    JOB,
    MAX_BATCH_BYTES,
    MAX_BATCH_SLICES,
    MAX_BATCHES,
    MAX_REASON,
    NONCE_SIZE,
    BatchRecord,
    JobRecord,
    JobSpec,
    canonical,
    decode_job,
    job_id_of,
)
from dhtmesh.node.records.kind import InvalidRecord
from dhtmesh.node.values.value import Value

# Batches a job is cut into (at most `BATCH_SLICES` each): enough for every worker, few enough that a
# batch's DHT work stays small beside its slices (measured: 64 cost 6 points of efficiency on 200
# CPU-bound slices, 84 % against 90 %).
SPREAD = 32
BATCH_SLICES = 250
T = TypeVar("T")
RUNTIMES = {"map-basic", "javascript"}  # dcp-rest's default worktime; both run the JavaScript function


class BadJob(ServiceError):
    """A request body that is not a job, or slices that do not fit one."""


class JobClosed(BadJob):
    """A change to a job that is closed (or cancelled): no more slices."""


@dataclass(frozen=True, slots=True)
class Deploy:
    spec: JobSpec
    slices: list[bytes]  # each slice's datum, canonical JSON


def _canonical(document: object, noun: str) -> bytes:
    try:
        return canonical(document)
    except (TypeError, orjson.JSONEncodeError) as error:
        raise BadJob(f"{noun} is not JSON: {error}") from error


def _whole(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise BadJob(f"{name} is a whole number from {low} to {high}")
    return value


def parse_deploy(body: object) -> Deploy:
    """dcp-rest's `POST /job` body: `{work: {function, runtime?}, slices?, args?, public?, redundancy?,
    sliceTimeoutMs?, maxRetries?, private?}`."""
    if not isinstance(body, dict):
        raise BadJob("the body is a JSON object")
    work = body.get("work")
    if not (isinstance(work, dict) and isinstance(work.get("function"), str) and work["function"].strip()):
        raise BadJob("work.function is the work function's JavaScript text")
    runtime = work.get("runtime", "map-basic")
    name = runtime.get("name", "map-basic") if isinstance(runtime, dict) else runtime
    if name not in RUNTIMES:
        raise BadJob(f"work.runtime {name!r} is not one this mesh runs: {sorted(RUNTIMES)}")
    args = body.get("args", [])
    public = body.get("public")
    if not isinstance(args, list) or not (public is None or isinstance(public, dict)):
        raise BadJob("args is a JSON array, public an object")
    if not isinstance(body.get("private", False), bool):
        raise BadJob("private is true or false")
    spec = JobSpec(
        function=work["function"],
        args=_canonical(args, "args"),
        redundancy=_whole(body, "redundancy", 1, 1, 9),
        slice_timeout_ms=_whole(body, "sliceTimeoutMs", 30_000, 1, 3_600_000),
        max_retries=_whole(body, "maxRetries", 3, 0, 16),
        public=_canonical(public, "public"),
        private=body.get("private", False),
    )
    slices = body.get("slices", [])
    return Deploy(spec, _slice_list(slices, "slices"))


def parse_slices(body: object) -> list[bytes]:
    """dcp-rest's `POST /job/{id}/slices` body: `{sliceData: [...]}`."""
    if not isinstance(body, dict):
        raise BadJob("the body is a JSON object")
    slices = _slice_list(body.get("sliceData"), "sliceData")
    if not slices:
        raise BadJob("sliceData holds at least one slice")
    return slices


def _slice_list(slices: object, name: str) -> list[bytes]:
    if not isinstance(slices, list):
        raise BadJob(f"{name} is a JSON array of the slices' data")
    data = [_canonical(datum, "a slice's datum") for datum in slices]
    if any(len(datum) > MAX_BATCH_BYTES for datum in data):
        raise BadJob(f"a slice's datum is at most {MAX_BATCH_BYTES} bytes of JSON")
    return data


def cut(slices: list[bytes]) -> list[list[bytes]]:
    """The slices in batches: about `SPREAD` of them, each at most `BATCH_SLICES` slices and one value's
    bytes."""
    size = max(1, min(BATCH_SLICES, MAX_BATCH_SLICES, math.ceil(len(slices) / SPREAD)))
    return packed(slices, len, MAX_BATCH_BYTES, size)


def packed(items: Iterable[T], weight: Callable[[T], int], limit: int, count: int | None = None) -> list[list[T]]:
    """`items`, in order, in parts of at most `limit` by `weight` and `count` items (if given): what one
    value or one request can carry. An item heavier than `limit` is alone in its part; no items, no part."""
    parts: list[list[T]] = []
    used = 0
    for item in items:
        heavy = weight(item)
        if not parts or used + heavy > limit or (count is not None and len(parts[-1]) >= count):
            parts.append([])
            used = 0
        parts[-1].append(item)
        used += heavy
    return parts


def _batches(owner: Identity, job: JobRecord, start: int, batches: list[list[bytes]], now: int) -> list[Value]:
    return [
        BATCH.sign(owner, BatchRecord(job.job_id, job.owner_id, start + offset, now, tuple(data)), 0)
        for offset, data in enumerate(batches)
    ]


def _check_room(job: JobRecord, batches: list[list[bytes]]) -> None:
    if len(job.batches) + len(batches) > MAX_BATCHES:
        raise BadJob(f"a job holds at most {MAX_BATCHES} batches of up to {BATCH_SLICES} slices")


def deploy(owner: Identity, request: Deploy, now: int | None = None) -> list[Value]:
    """The records that deploy a job: its batches, then the job (so that a worker that sees the job
    finds them)."""
    now = int(time.time()) if now is None else now
    nonce = os.urandom(NONCE_SIZE)
    batches = cut(request.slices)
    job_id = job_id_of(owner.node_id, nonce)
    job = JobRecord(job_id, owner.node_id, nonce, now, request.spec, (), updated=now, owner_key=owner.public_key)
    _check_room(job, batches)
    job = replace(job, batches=tuple(map(len, batches)))
    _reencoded(job)
    return [*_batches(owner, job, 0, batches, now), JOB.sign(owner, job, 0)]


def add_slices(owner: Identity, current: Value, slices: list[bytes], now: int | None = None) -> list[Value]:
    """The records that add `slices` to the job `current` (its latest signed value): new batches, then
    the job's next version."""
    now = int(time.time()) if now is None else now
    job = decode_job(current.data)
    if job.finished_adding:
        raise JobClosed("the job is closed: no more slices")
    batches = cut(slices)
    _check_room(job, batches)
    start = len(job.batches)
    following = replace(job, batches=job.batches + tuple(map(len, batches)), updated=max(now, job.updated))
    return [*_batches(owner, job, start, batches, now), JOB.sign(owner, following, current.seq + 1)]


def closed(owner: Identity, current: Value, now: int | None = None) -> Value:
    """The job's next version, closed: no more slices."""
    job = decode_job(current.data)
    now = max(int(time.time()) if now is None else now, job.updated)
    return JOB.sign(owner, replace(job, closed=True, updated=now), current.seq + 1)


def cancelled(owner: Identity, current: Value, reason: str = "", now: int | None = None) -> Value:
    """The job's next version, cancelled: workers stop its slices."""
    job = decode_job(current.data)
    now = max(int(time.time()) if now is None else now, job.updated)
    return JOB.sign(owner, replace(job, cancelled=True, reason=reason[:MAX_REASON], updated=now), current.seq + 1)


def _reencoded(job: JobRecord) -> None:
    """Raise `BadJob` unless the record is one every hop accepts (sizes of the function, args, public)."""
    try:
        decode_job(job.encode())
    except InvalidRecord as error:
        raise BadJob(str(error)) from error
