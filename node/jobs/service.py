"""Jobs as any node serves them: an owner's signed records checked and put (deploy, add slices, close,
cancel), and a job's state and results read from the mesh (`view.JobBook`).

A node never signs for an owner here: it checks that the records a request carries are the owner's,
that they are exactly the change asked for (a new job with its batches; the next version of the job
with the batches it adds; the job closed; the job cancelled) and that the work function compiles (in a
sandbox process, never in the node's), and then puts them, batches before the job that lists them.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.errors import ServiceError
from dhtmesh.node.jobs.owner import BadJob, JobClosed
from dhtmesh.node.jobs.sandbox import CompileError, SandboxPool
from dhtmesh.node.jobs.view import JobBook, JobStatus, JobView
from dhtmesh.node.records.job import (
    BATCH,
    BATCH_TYPE,
    JOB,
    JOB_TYPE,
    JOBS,
    BatchRecord,
    JobRecord,
    job_follows,
)
from dhtmesh.node.records.kind import InvalidRecord
from dhtmesh.node.values.value import Value

MAX_LISTED = 32  # jobs `jobs_of` gives the state of (the book follows 64 at most)


class UnknownJob(ServiceError):
    pass


class NotOwner(ServiceError):
    pass


@dataclass(frozen=True, slots=True)
class Change:
    """A request's records, read: the job's new version and the batches it adds."""

    value: Value
    job: JobRecord
    batches: list[tuple[Value, BatchRecord]]


def _read(values: list[Value], owner_id: bytes) -> Change:
    """The job value and batch values among a request's records, each the owner's."""
    jobs = [value for value in values if value.type == JOB_TYPE]
    others = [value for value in values if value.type != JOB_TYPE]
    if len(jobs) != 1 or any(value.type != BATCH_TYPE for value in others):
        raise BadJob("a change carries one job record and only its batches")
    try:
        job = JOB.decode(jobs[0].data)
        batches = [(value, BATCH.decode(value.data)) for value in others]
    except InvalidRecord as error:
        raise BadJob(str(error)) from error
    if job.owner_id != owner_id or any(batch.owner_id != owner_id for _, batch in batches):
        raise NotOwner("the records are not signed by the job's owner, who signed this request")
    return Change(jobs[0], job, batches)


def _check_batches(change: Change, start: int) -> None:
    """The batches are exactly the job's new ones, in order, each of the size the job lists."""
    batches = sorted(change.batches, key=lambda pair: pair[1].index)
    expected = list(enumerate(change.job.batches))[start:]
    given = [(batch.index, len(batch.data)) for _, batch in batches]
    if given != expected or any(batch.job_id != change.job.job_id for _, batch in batches):
        raise BadJob("the batches are not the ones the job's record lists")


class Jobs:
    def __init__(self, node: DhtNode, checker: SandboxPool) -> None:
        self._node = node
        self._checker = checker
        self.book = JobBook(node)

    async def close(self) -> None:
        await self.book.close()
        await self._checker.close()

    # ---- an owner's changes --------------------------------------------------------------------

    async def deploy(self, owner_id: bytes, values: list[Value]) -> bytes:
        """Put a new job; its id."""
        change = _read(values, owner_id)
        if change.value.seq != 0 or change.job.finished_adding:
            raise BadJob("a new job is its record's first version, open")
        _check_batches(change, 0)
        try:
            await self._checker.check(change.job.spec.function)
        except CompileError as error:
            raise BadJob(f"the work function does not compile: {error}") from error
        if await self.book.job(change.job.job_id) is not None:
            raise BadJob("this job exists already")
        await self._put(change)
        return change.job.job_id

    async def add_slices(self, owner_id: bytes, job_id: bytes, values: list[Value]) -> tuple[int, int]:
        """Put the slices a job's next version adds; (slices added, slices in all)."""
        seq, current = await self._owned(owner_id, job_id)
        change = _read(values, owner_id)
        self._check_follows(seq, current, change)
        if current.finished_adding:
            raise JobClosed("the job is closed: no more slices")
        _check_batches(change, len(current.batches))
        await self._put(change)
        return change.job.total_slices - current.total_slices, change.job.total_slices

    async def close_job(self, owner_id: bytes, job_id: bytes, values: list[Value]) -> None:
        await self._raise_flag(owner_id, job_id, values, lambda job: job.closed, "closed")

    async def cancel(self, owner_id: bytes, job_id: bytes, values: list[Value]) -> None:
        await self._raise_flag(owner_id, job_id, values, lambda job: job.cancelled, "cancelled")

    async def _raise_flag(
        self, owner_id: bytes, job_id: bytes, values: list[Value], raised: Callable[[JobRecord], bool], flag: str
    ) -> None:
        """Put the job's next version if it changes nothing but raising `flag` (and a cancel's reason)."""
        seq, current = await self._owned(owner_id, job_id)
        change = _read(values, owner_id)
        self._check_follows(seq, current, change)
        if change.batches or change.job.batches != current.batches or not raised(change.job):
            raise BadJob(f"this change of a job changes nothing but its {flag} flag")
        await self._put(change)

    async def owned_record(self, owner_id: bytes, job_id: bytes) -> Value:
        """The job's latest signed value, once `owner_id` is proven its owner (the base of its next change)."""
        await self._owned(owner_id, job_id)
        return await self.record(job_id)

    async def _owned(self, owner_id: bytes, job_id: bytes) -> tuple[int, JobRecord]:
        found = await self.book.job(job_id)
        if found is None:
            raise UnknownJob(f"no job {job_id.hex()} in the mesh")
        if found[1].owner_id != owner_id:
            raise NotOwner("only the job's owner changes it")
        return found

    @staticmethod
    def _check_follows(seq: int, current: JobRecord, change: Change) -> None:
        if change.job.job_id != current.job_id:
            raise BadJob("the record is another job's")
        if change.value.seq <= seq or not job_follows(current, change.job):
            raise BadJob("the record is not the job's next version (read the job's record again)")

    async def _put(self, change: Change) -> None:
        await asyncio.gather(*(self._node.put(BATCH.key_for(batch), value) for value, batch in change.batches))
        await self._node.put(JOBS.key_for(change.job.job_id), change.value)
        self.book.learn(change.value)

    # ---- reading --------------------------------------------------------------------------------

    async def record(self, job_id: bytes) -> Value:
        """The job's latest signed value, as the mesh holds it."""
        values = await self._node.get(JOBS.key_for(job_id), value_type=JOB_TYPE)
        mine = [value for value in values if JOB.decode(value.data).job_id == job_id]
        if not mine:
            raise UnknownJob(f"no job {job_id.hex()} in the mesh")
        return max(mine, key=lambda value: value.seq)

    async def view(self, job_id: bytes, admit: Callable[[int], bool] | None = None) -> JobView:
        """The job's view; opening one (following its result keys) only as far as `admit` allows."""
        view = await self.book.view(job_id, admit)
        if view is None:
            raise UnknownJob(f"no job {job_id.hex()} in the mesh")
        return view

    async def jobs_of(
        self, owner_id: bytes, admit: Callable[[int], bool] | None = None
    ) -> list[tuple[JobRecord, JobStatus]]:
        """The owner's jobs (newest first, at most `MAX_LISTED`), each with its state."""
        mine = sorted(
            (job for job in await self.book.jobs() if job.owner_id == owner_id), key=lambda job: -job.created
        )[:MAX_LISTED]
        views = await asyncio.gather(*(self.view(job.job_id, admit) for job in mine))
        return [(view.job, view.status()) for view in views]

    async def count_of(self, owner_id: bytes) -> int:
        return sum(job.owner_id == owner_id for job in await self.book.jobs())
