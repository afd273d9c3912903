"""A worker node's part in jobs: it takes batches of open jobs' slices, computes them in its sandboxes
and publishes the results, signed.

Each of its `slots` (one per sandbox) repeats: choose a batch that still needs this worker (a slice
with no accepted value, that this worker has not answered, or failed itself more than `RETRY_GRACE`
ago), lease it, fetch its data, run what it needs in a sandbox while renewing the lease, publish the
outcome as one result record (more if it is big), and give the lease back (`leases`: a worker that
dies stops renewing, its lease lapses, and the batch goes to others). A batch computed twice counts
once: the votes count each worker once. A job whose batches are missing, or whose function does not
compile (put past the deploy's check), is left alone for a while, not retried in a loop.

A cancelled job's running slices are stopped at once (`SandboxPool.cancel`). Where this worker's value
won a slice over another's, it reports the one it outvoted (`standing.Reporter`).
"""

import asyncio
import logging
import random
import time

import orjson

from dhtmesh.crypto.identity import Identity
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.errors import NodeError, ServiceError
from dhtmesh.node.jobs.leases import Leases
from dhtmesh.node.jobs.owner import packed
from dhtmesh.node.jobs.sandbox import Cancelled, CompileError, SandboxError, SandboxPool, SliceOutcome
from dhtmesh.node.jobs.sealing import sealed_value
from dhtmesh.node.jobs.standing import Reporter
from dhtmesh.node.jobs.view import JobBook, JobView
from dhtmesh.node.records.job import (
    BATCH,
    BATCH_TYPE,
    MAX_RESULT_BYTES,
    RESULT,
    BatchRecord,
    JobRecord,
    ResultRecord,
    SliceResult,
    batch_key,
)
from dhtmesh.node.tasks import TaskSet
from dhtmesh.node.values.value import InvalidValue

log = logging.getLogger(__name__)

IDLE_WAIT = 1.0  # seconds an idle slot waits for a change before looking again
BUSY_SKIP = 2.0  # seconds a batch whose leases are all held by others is left alone
MISSING_SKIP = 30.0  # seconds a job with a missing batch is left alone
BROKEN_SKIP = 3600.0  # seconds a job whose function does not compile is left alone
NEAREST = 8  # a slot picks among the first unsettled batches it may take, at random: first results soonest


class MissingBatch(ServiceError):
    """A batch the job lists that the mesh does not hold (its owner puts batches before the job)."""


class Worker:
    def __init__(self, node: DhtNode, book: JobBook, pool: SandboxPool, slots: int) -> None:
        self._node = node
        self._identity: Identity = node.identity
        self._book = book
        self._pool = pool
        self._slots = slots
        self._taken: set[tuple[bytes, int]] = set()  # batches this worker's slots are on now
        self._skip: dict[tuple[bytes, int], float] = {}  # batch -> until when others hold it
        self._leases = Leases(node)
        self._finished: set[bytes] = set()  # jobs done: not looked at again (the book follows only so many)
        self._skip_jobs: dict[bytes, float] = {}  # jobs whose batches are missing -> until when left alone
        self._settled_open: dict[bytes, int] = {}  # open jobs with every slice settled -> their batches then
        self._reporter = Reporter(node)
        self._renewals = TaskSet(node.counters)
        book.on_cancel = pool.cancel

    @property
    def slots(self) -> int:
        return self._slots

    async def close(self) -> None:
        await self._renewals.close()

    async def slot(self) -> None:
        """One slot's loop (the node's supervisor runs one per sandbox), until cancelled."""
        while True:
            choice = await self._choose()
            if choice is None:
                await self._book.changed(within=IDLE_WAIT)
                continue
            view, index = choice
            self._taken.add((view.job_id, index))
            try:
                await self._work(view, index)
            except Cancelled:
                self._node.counters.add("jobs.batches_cancelled")
            except MissingBatch as error:  # a job listing batches its owner never put: a broken or hostile one
                self._node.counters.add("jobs.batches_missing")
                log.info("%s", error)
                self._skip_jobs[view.job_id] = time.time() + MISSING_SKIP
            except CompileError as error:  # put straight into the DHT, past the deploy's check: never runs
                self._node.counters.add("jobs.broken_functions")
                log.info("job %s: its work function does not compile: %s", view.job_id.hex(), error)
                self._skip_jobs[view.job_id] = time.time() + BROKEN_SKIP
            except (NodeError, InvalidValue, SandboxError) as error:  # a put refused, a batch unreadable
                self._node.counters.add("jobs.batches_failed")
                log.warning("batch %d of job %s: %s", index, view.job_id.hex(), error)
                self._skip[(view.job_id, index)] = time.time() + BUSY_SKIP
            finally:
                self._taken.discard((view.job_id, index))

    async def _choose(self) -> tuple[JobView, int] | None:
        """A batch of an open job that needs this worker, or None."""
        now = time.time()
        self._skip = {batch: until for batch, until in self._skip.items() if until > now}
        self._skip_jobs = {job: until for job, until in self._skip_jobs.items() if until > now}
        me = self._identity.node_id
        jobs = await self._book.jobs()
        live = {job.job_id for job in jobs}
        self._finished &= live
        self._settled_open = {job: batches for job, batches in self._settled_open.items() if job in live}
        random.shuffle(jobs)  # every open job gets its share of workers, whoever deployed many
        for job in jobs:
            if job.cancelled or not job.batches or job.job_id in self._finished or job.job_id in self._skip_jobs:
                continue
            if self._settled_open.get(job.job_id) == len(job.batches):
                continue  # every slice settled, the job still open: nothing until it gets more
            view = await self._book.view(job.job_id)
            if view is None:
                continue
            await self._reporter.scan(view)
            if view.finished:
                self._finished.add(job.job_id)
                continue
            open_batches = [
                index
                for index, tally in enumerate(view.tallies)
                if (job.job_id, index) not in self._taken
                and (job.job_id, index) not in self._skip
                and tally.needs(view.job, me, now)
            ]
            if open_batches:
                return view, random.choice(open_batches[:NEAREST])
            if all(tally.done for tally in view.tallies):
                self._settled_open[job.job_id] = len(job.batches)
        return None

    async def _work(self, view: JobView, index: int) -> None:
        job, tally = view.job, view.tallies[index]
        wants = tally.wants(job, time.time())
        busy_until = await self._leases.take(view, index, max((w.more for w in wants.values()), default=0))
        if busy_until is not None:
            self._skip[(view.job_id, index)] = min(busy_until, time.time() + BUSY_SKIP)
            return
        try:
            me = self._identity.node_id
            numbers = [n for n, wanted in wants.items() if me not in wanted.excluded]
            if not numbers:
                return  # settled, or answered by this worker, since it was chosen
            batch = await self._batch(view, index)
            data = [orjson.loads(batch.data[n - tally.first]) for n in numbers]
            self._node.counters.add("jobs.slices_started", len(numbers))
            # Renewed for as long as the slices run; cancelled and awaited below, whatever the run does (a
            # TaskGroup would wrap a `Cancelled` from the run in an ExceptionGroup).
            renewing = self._renewals.spawn(self._leases.renew(view.job_id, index))
            try:
                if view.job.cancelled:  # a cancel seen while the batch was leased and fetched
                    raise Cancelled("the job was cancelled")
                outcomes = await self._pool.run(
                    job.job_id, job.spec.function, orjson.loads(job.spec.args), data, job.spec.slice_timeout_ms
                )
            finally:
                renewing.cancel()
                await asyncio.gather(renewing, return_exceptions=True)
            await self._publish(view, index, numbers, outcomes)
            self._node.counters.add("jobs.slices_computed", len(numbers))
        finally:
            if tally.done:
                self._leases.drop(view.job_id, index)  # settled: nobody needs the batch; the lease lapses
            else:
                await self._leases.give_back(view.job_id, index)

    async def _batch(self, view: JobView, index: int) -> BatchRecord:
        """The batch's data, as its owner signed it (another signer's value under its key is ignored)."""
        for value in await self._node.get(batch_key(view.job_id, index), value_type=BATCH_TYPE):
            batch = BATCH.decode(value.data)
            if batch.owner_id == view.job.owner_id and batch.job_id == view.job_id and batch.index == index:
                if len(batch.data) == view.tallies[index].count:
                    return batch
        raise MissingBatch(f"batch {index} of job {view.job_id.hex()} is not in the mesh")

    async def _publish(self, view: JobView, index: int, numbers: list[int], outcomes: list[SliceOutcome]) -> None:
        """The outcomes as result records (as many as their size needs), put and learnt at once."""
        entries = [_entry(number, outcome) for number, outcome in zip(numbers, outcomes, strict=True)]
        if view.job.spec.private:
            entries = [_sealed(view.job, entry) for entry in entries]
        first_round = view.tallies[index].rounds_of(self._identity.node_id)
        now = int(time.time())
        records = [
            ResultRecord(self._identity.node_id, view.job_id, index, first_round + offset, now, tuple(part))
            for offset, part in enumerate(packed(entries, _weight, MAX_RESULT_BYTES))
        ]
        values = [RESULT.sign(self._identity, record, 0) for record in records]
        for value in values:
            view.learn(value)
        await asyncio.gather(*(self._node.put(RESULT.key_for(r), v) for r, v in zip(records, values, strict=True)))


def _entry(number: int, outcome: SliceOutcome) -> SliceResult:
    cpu_ms = max(0, int(outcome.cpu_ms))
    if outcome.value is not None:
        return SliceResult(number, outcome.value, None, cpu_ms)
    return SliceResult(number, None, (outcome.error or "ESANDBOX: no outcome")[:512], cpu_ms)


def _sealed(job: JobRecord, entry: SliceResult) -> SliceResult:
    if entry.value is None:
        return entry
    return SliceResult(entry.number, sealed_value(job, entry.number, entry.value), None, entry.cpu_ms)


def _weight(entry: SliceResult) -> int:
    """About what an entry takes of a result record (its value or error, and its fields)."""
    return len(entry.value or b"") + len(entry.error or "") + 16
