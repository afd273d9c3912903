"""A worker node's part in jobs: it takes batches of open jobs' slices, computes them in its sandboxes
and publishes the results, signed.

Each of its `slots` (one per sandbox) repeats: choose a batch that still needs this worker (a slice
with no accepted value, that this worker has not answered, or failed itself more than `RETRY_GRACE`
ago), lease it, fetch its data, run what it needs in a sandbox while renewing the lease, publish the
outcome as one result record (more if it is big), and give the lease back. A lease is taken only while
fewer live leases than the batch needs are held by others; a worker that dies stops renewing, its
lease lapses within `LEASE_SECONDS`, and the batch goes to others. Two workers that take one batch at
the same instant only compute it twice: the votes count each worker once.

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
from dhtmesh.node.jobs.sandbox import Cancelled, SandboxPool, SliceOutcome
from dhtmesh.node.jobs.sealing import sealed_value
from dhtmesh.node.jobs.standing import Reporter
from dhtmesh.node.jobs.view import JobBook, JobView
from dhtmesh.node.records.job import (
    BATCH,
    BATCH_TYPE,
    LEASE,
    LEASE_TYPE,
    MAX_RESULT_BYTES,
    RESULT,
    BatchRecord,
    JobRecord,
    LeaseRecord,
    ResultRecord,
    SliceResult,
    batch_key,
    lease_key,
)
from dhtmesh.node.tasks import TaskSet
from dhtmesh.node.values.value import InvalidValue

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0
IDLE_WAIT = 1.0  # seconds an idle slot waits for a change before looking again
BUSY_SKIP = 2.0
MISSING_SKIP = 30.0  # seconds a job with a missing batch is left alone
MIN_HOLD = 4.0  # seconds a batch whose leases are all held by others is left alone
SEQ_EPOCH_MS = 1_767_225_600_000
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
        self._held: dict[tuple[bytes, int], tuple[int, int]] = {}  # batch -> (last seq, since) of this lease
        self._finished: set[bytes] = set()  # jobs done: not looked at again (the book follows only so many)
        self._skip_jobs: dict[bytes, float] = {}  # jobs whose batches are missing -> until when left alone
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
            except (NodeError, InvalidValue) as error:  # a put refused, a batch unreadable
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
        self._finished &= {job.job_id for job in jobs}
        random.shuffle(jobs)  # every open job gets its share of workers, whoever deployed many
        for job in jobs:
            if job.cancelled or not job.batches or job.job_id in self._finished or job.job_id in self._skip_jobs:
                continue
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
        return None

    async def _work(self, view: JobView, index: int) -> None:
        job, tally = view.job, view.tallies[index]
        wants = tally.wants(job, time.time())
        if not await self._lease(view, index, max((w.more for w in wants.values()), default=0)):
            return
        try:
            me = self._identity.node_id
            numbers = [n for n, wanted in wants.items() if me not in wanted.excluded]
            batch = await self._batch(view, index)
            data = [orjson.loads(batch.data[n - tally.first]) for n in numbers]
            self._node.counters.add("jobs.slices_started", len(numbers))
            # Renewed for as long as the slices run; cancelled and awaited below, whatever the run does (a
            # TaskGroup would wrap a `Cancelled` from the run in an ExceptionGroup).
            renewing = self._renewals.spawn(self._renew(view.job_id, index))
            try:
                outcomes = await self._pool.run(
                    job.job_id, job.spec.function, orjson.loads(job.spec.args), data, job.spec.slice_timeout_ms
                )
            finally:
                renewing.cancel()
                await asyncio.gather(renewing, return_exceptions=True)
            await self._publish(view, index, numbers, outcomes)
            self._node.counters.add("jobs.slices_computed", len(numbers))
        finally:
            await self._give_back(view.job_id, index)

    async def _give_back(self, job_id: bytes, index: int) -> None:
        """End the lease now, so the batch may go on elsewhere (if this fails, it lapses by itself)."""
        try:
            await self._put_lease(job_id, index, 0.0)
        except (NodeError, InvalidValue) as error:
            self._node.counters.add("jobs.leases_not_given_back")
            log.info("lease on batch %d of job %s lapses instead: %s", index, job_id.hex(), error)
        finally:
            self._held.pop((job_id, index), None)

    async def _lease(self, view: JobView, index: int, wanted: int) -> bool:
        """Take a lease on the batch if fewer live leases than `wanted` are held by others; then look
        again, and give it back if workers that took it first (by start time, then id) hold enough:
        of two workers that took a batch at one instant, one computes it."""
        batch = (view.job_id, index)
        others = await self._others(view, index)
        if len(others) < wanted:
            await self._put_lease(view.job_id, index, LEASE_SECONDS)
            mine = (self._held[batch][1], self._identity.node_id)
            others = [lease for lease in await self._others(view, index) if (lease.since, lease.worker_id) < mine]
            if len(others) < wanted:
                return True
            await self._give_back(view.job_id, index)
        soonest = min(lease.until for lease in others) / 1000
        self._skip[batch] = min(soonest, time.time() + BUSY_SKIP)
        return False

    async def _others(self, view: JobView, index: int) -> list[LeaseRecord]:
        """The live leases other workers hold on the batch (one held past what the batch could take is
        not counted: a squatter renewing without results)."""
        now = time.time()
        values = await self._node.get(lease_key(view.job_id, index), value_type=LEASE_TYPE)
        hold = max_hold(view.slice_seconds(), view.tallies[index].count)
        return [
            lease
            for lease in LEASE.records_in(values)
            if lease.worker_id != self._identity.node_id
            and lease.job_id == view.job_id
            and lease.index == index
            and lease.live(now)
            and now * 1000 - lease.since <= hold * 1000
        ]

    async def _put_lease(self, job_id: bytes, index: int, seconds: float) -> None:
        now = int(time.time() * 1000)
        last, since = self._held.get((job_id, index), (-1, now))
        # Centiseconds since 2026: higher than any seq this worker gave the lease before, even after a
        # restart, as long as its lease could still be held (it is 32 bits: 497 days).
        seq = max(last + 1, (now - SEQ_EPOCH_MS) // 10)
        self._held[(job_id, index)] = (seq, since)
        lease = LeaseRecord(self._identity.node_id, job_id, index, since, max(since + 1, now + int(seconds * 1000)))
        await self._node.put(lease_key(job_id, index), LEASE.sign(self._identity, lease, seq))

    async def _renew(self, job_id: bytes, index: int) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await self._put_lease(job_id, index, LEASE_SECONDS)
            except (NodeError, InvalidValue) as error:  # the next renewal may pass; else it lapses, harmlessly
                self._node.counters.add("jobs.lease_renewals_failed")
                log.info("lease on batch %d of job %s not renewed: %s", index, job_id.hex(), error)

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
            for offset, part in enumerate(_parts(entries))
        ]
        values = [RESULT.sign(self._identity, record, 0) for record in records]
        for value in values:
            view.learn(value)
        await asyncio.gather(*(self._node.put(RESULT.key_for(r), v) for r, v in zip(records, values, strict=True)))


def max_hold(slice_seconds: float, count: int) -> float:
    """Seconds a lease on a batch of `count` slices is honoured from its start: twice what the batch
    should take, by the job's own results so far, and at least `MIN_HOLD`. Past it the batch is taken
    anyway (the work counts once): a worker that renews without results, or a key that leased every
    batch and computes nothing, holds a job up that long at most."""
    return max(MIN_HOLD, 2 * slice_seconds * count + 1)


def _entry(number: int, outcome: SliceOutcome) -> SliceResult:
    cpu_ms = max(0, int(outcome.cpu_ms))
    if outcome.value is not None:
        return SliceResult(number, outcome.value, None, cpu_ms)
    return SliceResult(number, None, (outcome.error or "ESANDBOX: no outcome")[:512], cpu_ms)


def _sealed(job: JobRecord, entry: SliceResult) -> SliceResult:
    if entry.value is None:
        return entry
    return SliceResult(entry.number, sealed_value(job, entry.number, entry.value), None, entry.cpu_ms)


def _parts(entries: list[SliceResult]) -> list[list[SliceResult]]:
    """The entries in parts of at most `MAX_RESULT_BYTES` each (a value's room)."""
    parts: list[list[SliceResult]] = [[]]
    used = 0
    for entry in entries:
        size = len(entry.value or b"") + len(entry.error or "") + 16
        if parts[-1] and used + size > MAX_RESULT_BYTES:
            parts.append([])
            used = 0
        parts[-1].append(entry)
        used += size
    return parts
