"""The records of a job in the DHT, and the rule each hop applies to them (`KINDS`, in `rules.KINDS`).

- The **job** (signed by its owner, in the sharded directory of jobs, so that workers find every open
  job by listening to 16 keys): its spec (work function, args, redundancy, limits), how many slices
  each of its batches holds, and whether it is closed or cancelled. Its id is bound to its owner (a
  hash of the owner's id and a nonce), so nobody else can sign a job under it; each change is a higher
  seq that keeps everything but the batches (only appended to) and the flags (only ever raised).
- A **batch** of slices (signed by the owner, one key per batch): the slices' data, as canonical JSON.
- A **lease** (signed by a worker, one key per batch): the worker is computing the batch until `until`
  (ms), renewed while it works; it is gone when it lapses, so a dead worker's batches go to others. It
  says since when the worker holds the batch, so that a worker renewing forever without results is
  seen for what it is (`worker`: a lease held past what the batch could take is ignored).
- A **result** (signed by the worker, one key per `RESULTS_PER_KEY` batches, so that a reader follows a
  job of 10,000 slices through a handful of keys): the outcome of each slice the worker ran.

Every field is checked for type and size on decode, at every hop, before anything reads it.
"""

import hashlib
import time
from dataclasses import dataclass, replace
from itertools import accumulate

import orjson

from dhtmesh.crypto.keys import NODE_ID_SIZE, PUBLIC_KEY_SIZE, node_id_from_public_key
from dhtmesh.node.records.keys import ShardedDirectory, reserved_key
from dhtmesh.node.records.kind import CLOCK_SKEW, InvalidRecord, RecordKind, pack, unpack, well_sized
from dhtmesh.node.values.types import DAY

JOB_TYPE = 0x4A6F
BATCH_TYPE = 0x4A62
LEASE_TYPE = 0x4A6C
RESULT_TYPE = 0x4A72
JOB_EXPIRY = 1 * DAY  # after the job's last change, and after a batch's or result's own time
LEASE_MAX = 300.0  # seconds: no lease runs longer without a renewal
NONCE_SIZE = 16
JOB_ID_SIZE = 20
MAX_FUNCTION = 32 * 1024  # with args, public and 1,024 batch sizes, one value of at most 64 KiB
MAX_ARGS = 8 * 1024
MAX_PUBLIC = 2 * 1024
MAX_BATCHES = 1024  # a reader follows a job's results through MAX_BATCHES / RESULTS_PER_KEY keys
MAX_BATCH_SLICES = 1024
MAX_BATCH_BYTES = 48 * 1024  # a batch's data: with its fields and signature, one value of at most 64 KiB
MAX_RESULT_BYTES = 56 * 1024  # the entries of one result record; more go in another round
MAX_REDUNDANCY = 9
MAX_RETRIES = 16
MAX_SLICE_MS = 3_600_000
MAX_REASON = 512
RESULTS_PER_KEY = 32

JOBS = ShardedDirectory(JOB_TYPE, b"dhtmesh/jobs/")
_JOB_ID_DOMAIN = b"dhtmesh/job/v1"


def canonical(document: object) -> bytes:
    """The one JSON form of a document (sorted keys, no spaces): what is signed, stored and voted on."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def _json(raw: object, limit: int, noun: str) -> bytes:
    if not (isinstance(raw, bytes) and len(raw) <= limit):
        raise InvalidRecord(f"{noun} is JSON of at most {limit} bytes")
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRecord(f"{noun} is not JSON") from error
    return raw


def _count(raw: object, low: int, high: int, noun: str) -> int:
    if not (type(raw) is int and low <= raw <= high):
        raise InvalidRecord(f"{noun} is a whole number from {low} to {high}")
    return raw


def _time(raw: object, noun: str, scale: int = 1) -> int:
    if not (type(raw) is int and 0 <= raw <= (time.time() + CLOCK_SKEW) * scale):
        raise InvalidRecord(f"{noun} is a time, not in the future")
    return raw


def _index_bytes(job_id: bytes, index: int) -> bytes:
    return job_id + index.to_bytes(4, "big")


def job_id_of(owner_id: bytes, nonce: bytes) -> bytes:
    """A job's id: bound to its owner, so nobody else can sign a job under it."""
    return hashlib.sha1(_JOB_ID_DOMAIN + owner_id + nonce).digest()


# ---- the job -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the owner asked for, fixed at deploy."""

    function: str
    args: bytes  # canonical JSON array: the work function's arguments after the datum
    redundancy: int = 1
    slice_timeout_ms: int = 30_000
    max_retries: int = 3
    public: bytes = b"null"  # canonical JSON: dcp-rest's {name, description, link}
    private: bool = False  # results sealed to the owner

    def to_wire(self) -> list:
        return [
            self.function, self.args, self.redundancy, self.slice_timeout_ms, self.max_retries, self.public,
            self.private,
        ]  # fmt: skip


def _spec(raw: object) -> JobSpec:
    if not (isinstance(raw, list) and len(raw) == 7):
        raise InvalidRecord("a job spec has 7 fields")
    function, args, redundancy, timeout, retries, public, private = raw
    if not (isinstance(function, str) and 0 < len(function.encode()) <= MAX_FUNCTION):
        raise InvalidRecord(f"the work function is text of 1 to {MAX_FUNCTION} bytes")
    if not isinstance(orjson.loads(_json(args, MAX_ARGS, "args")), list) or not isinstance(private, bool):
        raise InvalidRecord("args is a JSON array; private is a boolean")
    return JobSpec(
        function,
        args,
        _count(redundancy, 1, MAX_REDUNDANCY, "redundancy"),
        _count(timeout, 1, MAX_SLICE_MS, "sliceTimeoutMs"),
        _count(retries, 0, MAX_RETRIES, "maxRetries"),
        _json(public, MAX_PUBLIC, "public"),
        private,
    )


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: bytes
    owner_id: bytes
    nonce: bytes
    created: int
    spec: JobSpec
    batches: tuple[int, ...]  # slices per batch, in order: slice numbers run on from 1
    closed: bool = False
    cancelled: bool = False
    reason: str = ""
    updated: int = 0  # the time of its last change: it lives a day after it
    owner_key: bytes = b""  # the owner's public key: private results are sealed to it

    def encode(self) -> bytes:
        return pack(
            self.job_id, self.owner_id, self.nonce, self.created, self.spec.to_wire(), list(self.batches),
            self.closed, self.cancelled, self.reason, self.updated, self.owner_key,
        )  # fmt: skip

    @property
    def total_slices(self) -> int:
        return sum(self.batches)

    def firsts(self) -> list[int]:
        """The number of each batch's first slice."""
        return list(accumulate(self.batches[:-1], initial=1)) if self.batches else []

    @property
    def finished_adding(self) -> bool:
        return self.closed or self.cancelled


def decode_job(data: bytes) -> JobRecord:
    fields = unpack(data, "job", 11)
    job_id, owner_id, nonce, created, spec, batches, closed, cancelled, reason, updated, owner_key = fields
    sizes = ((job_id, JOB_ID_SIZE), (owner_id, NODE_ID_SIZE), (nonce, NONCE_SIZE), (owner_key, PUBLIC_KEY_SIZE))
    if not well_sized(sizes):
        raise InvalidRecord("job and owner ids are 20 bytes, the nonce 16, the owner's key 32")
    if job_id != job_id_of(owner_id, nonce) or node_id_from_public_key(owner_key) != owner_id:
        raise InvalidRecord("a job's id and key are its owner's")
    well_formed = (
        isinstance(batches, list)
        and len(batches) <= MAX_BATCHES
        and all(type(count) is int and 0 < count <= MAX_BATCH_SLICES for count in batches)
        and isinstance(closed, bool)
        and isinstance(cancelled, bool)
        and isinstance(reason, str)
        and len(reason) <= MAX_REASON
    )
    if not well_formed:
        raise InvalidRecord("malformed job")
    created, updated = _time(created, "created"), _time(updated, "updated")
    if updated < created:
        raise InvalidRecord("a job is updated after it is created")
    spec = _spec(spec)
    return JobRecord(
        job_id, owner_id, nonce, created, spec, tuple(batches), closed, cancelled, reason, updated, owner_key
    )


def job_follows(current: JobRecord, incoming: JobRecord) -> bool:
    """A job's next version keeps what it was deployed with and its batches, and never reopens."""
    return (
        replace(incoming, batches=current.batches, closed=current.closed, cancelled=current.cancelled,
                reason=current.reason, updated=current.updated) == current
        and incoming.batches[: len(current.batches)] == current.batches
        and incoming.closed >= current.closed
        and incoming.cancelled >= current.cancelled
        and incoming.updated >= current.updated
    )  # fmt: skip


JOB = RecordKind(
    JOB_TYPE, JOB_EXPIRY, "a job", decode_job, lambda job: job.job_id, JOBS, signer="its owner",
    follows=job_follows, anchor=lambda job: job.updated, signer_of=lambda job: job.owner_id,
)  # fmt: skip


# ---- a batch of slices -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchRecord:
    job_id: bytes
    owner_id: bytes
    index: int
    created: int
    data: tuple[bytes, ...]  # each slice's datum, canonical JSON

    def encode(self) -> bytes:
        return pack(self.job_id, self.owner_id, self.index, self.created, list(self.data))


def batch_key(job_id: bytes, index: int) -> bytes:
    return reserved_key(BATCH_TYPE, b"dhtmesh/job-batch/", _index_bytes(job_id, index))


def batch_record_id(owner_id: bytes, job_id: bytes, index: int) -> bytes:
    """Its value id's source: per signer, so that a stranger's value under the key never replaces it."""
    return hashlib.sha1(b"batch" + owner_id + _index_bytes(job_id, index)).digest()


def decode_batch(data: bytes) -> BatchRecord:
    job_id, owner_id, index, created, slices = unpack(data, "batch", 5)
    if not well_sized(((job_id, JOB_ID_SIZE), (owner_id, NODE_ID_SIZE))):
        raise InvalidRecord("job and owner ids are 20 bytes")
    index = _count(index, 0, MAX_BATCHES - 1, "a batch's index")
    if not (isinstance(slices, list) and 0 < len(slices) <= MAX_BATCH_SLICES):
        raise InvalidRecord(f"a batch holds 1 to {MAX_BATCH_SLICES} slices")
    checked = tuple(_json(datum, MAX_BATCH_BYTES, "a slice's datum") for datum in slices)
    if sum(map(len, checked)) > MAX_BATCH_BYTES:
        raise InvalidRecord(f"a batch's data is at most {MAX_BATCH_BYTES} bytes")
    return BatchRecord(job_id, owner_id, index, _time(created, "created"), checked)


BATCH = RecordKind(
    BATCH_TYPE, JOB_EXPIRY, "a slice batch", decode_batch,
    lambda batch: batch_record_id(batch.owner_id, batch.job_id, batch.index),
    key_of=lambda batch: batch_key(batch.job_id, batch.index), signer="the job's owner",
    follows=lambda current, incoming: current == incoming, anchor=lambda batch: batch.created,
    signer_of=lambda batch: batch.owner_id,
)  # fmt: skip


# ---- a worker's lease on a batch ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    worker_id: bytes
    job_id: bytes
    index: int
    since: int  # ms: when the worker took the batch (kept as it renews)
    until: int  # ms: the lease is gone after it, unless renewed

    def encode(self) -> bytes:
        return pack(self.worker_id, self.job_id, self.index, self.since, self.until)

    def live(self, now: float) -> bool:
        return now * 1000 < self.until


def lease_key(job_id: bytes, index: int) -> bytes:
    return reserved_key(LEASE_TYPE, b"dhtmesh/job-lease/", _index_bytes(job_id, index))


def lease_record_id(worker_id: bytes, job_id: bytes, index: int) -> bytes:
    return hashlib.sha1(b"lease" + worker_id + _index_bytes(job_id, index)).digest()


def decode_lease(data: bytes) -> LeaseRecord:
    worker_id, job_id, index, since, until = unpack(data, "lease", 5)
    if not well_sized(((worker_id, NODE_ID_SIZE), (job_id, JOB_ID_SIZE))):
        raise InvalidRecord("worker and job ids are 20 bytes")
    index = _count(index, 0, MAX_BATCHES - 1, "a batch's index")
    since = _time(since, "a lease's start", 1000)
    if not (type(until) is int and since < until <= (time.time() + LEASE_MAX + CLOCK_SKEW) * 1000):
        raise InvalidRecord(f"a lease ends after it starts, within {LEASE_MAX:.0f} s from now")
    return LeaseRecord(worker_id, job_id, index, since, until)


LEASE = RecordKind(
    LEASE_TYPE, LEASE_MAX, "a lease", decode_lease,
    lambda lease: lease_record_id(lease.worker_id, lease.job_id, lease.index),
    key_of=lambda lease: lease_key(lease.job_id, lease.index), signer="its worker",  # any next one: renewed, given back
    anchor=lambda lease: lease.until // 1000 + 1 - int(LEASE_MAX), signer_of=lambda lease: lease.worker_id,
)  # fmt: skip


# ---- a worker's results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SliceResult:
    number: int  # 1-based, in the job
    value: bytes | None  # canonical JSON, if the slice succeeded
    error: str | None  # else why it failed ("ESLICETOOSLOW: ...")
    cpu_ms: int

    def to_wire(self) -> list:
        return [self.number, self.value, self.error, self.cpu_ms]


@dataclass(frozen=True, slots=True)
class ResultRecord:
    worker_id: bytes
    job_id: bytes
    index: int
    round: int  # the worker's n-th record for this batch (a retry of its own error, or the rest of a big one)
    time: int
    entries: tuple[SliceResult, ...]

    def encode(self) -> bytes:
        return pack(self.worker_id, self.job_id, self.index, self.round, self.time, [e.to_wire() for e in self.entries])


def results_key(job_id: bytes, index: int) -> bytes:
    """The key of the results of batch `index`, which it shares with its neighbours."""
    return reserved_key(RESULT_TYPE, b"dhtmesh/job-results/", _index_bytes(job_id, index // RESULTS_PER_KEY))


def result_record_id(worker_id: bytes, job_id: bytes, index: int, round_: int) -> bytes:
    return hashlib.sha1(b"result" + worker_id + _index_bytes(job_id, index) + round_.to_bytes(4, "big")).digest()


def _entry(raw: object) -> SliceResult:
    if not (isinstance(raw, list) and len(raw) == 4):
        raise InvalidRecord("a slice result has 4 fields")
    number, value, error, cpu_ms = raw
    number = _count(number, 1, MAX_BATCHES * MAX_BATCH_SLICES, "a slice number")
    if (value is None) == (error is None) or not (error is None or (isinstance(error, str) and len(error) <= 512)):
        raise InvalidRecord("a slice result holds a value or an error of at most 512 characters")
    value = None if value is None else _json(value, MAX_RESULT_BYTES, "a slice's value")
    return SliceResult(number, value, error, _count(cpu_ms, 0, MAX_SLICE_MS, "cpu time"))


def decode_result(data: bytes) -> ResultRecord:
    worker_id, job_id, index, round_, at, entries = unpack(data, "result", 6)
    if not well_sized(((worker_id, NODE_ID_SIZE), (job_id, JOB_ID_SIZE))):
        raise InvalidRecord("worker and job ids are 20 bytes")
    index = _count(index, 0, MAX_BATCHES - 1, "a batch's index")
    if not (isinstance(entries, list) and 0 < len(entries) <= MAX_BATCH_SLICES):
        raise InvalidRecord(f"a result holds 1 to {MAX_BATCH_SLICES} slices")
    checked = tuple(_entry(raw) for raw in entries)
    if len({entry.number for entry in checked}) != len(checked):
        raise InvalidRecord("a result gives each slice once")  # one outcome is one attempt
    return ResultRecord(
        worker_id, job_id, index, _count(round_, 0, 1 << 20, "a round"), _time(at, "a result's time"), checked
    )


RESULT = RecordKind(
    RESULT_TYPE, JOB_EXPIRY, "a slice result", decode_result,
    lambda result: result_record_id(result.worker_id, result.job_id, result.index, result.round),
    key_of=lambda result: results_key(result.job_id, result.index), signer="its worker",
    follows=lambda current, incoming: current == incoming, anchor=lambda result: result.time,
    signer_of=lambda result: result.worker_id,
)  # fmt: skip

KINDS = (JOB, BATCH, LEASE, RESULT)
