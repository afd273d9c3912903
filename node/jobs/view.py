"""A node's view of jobs, read from the mesh: every job in the jobs directory (`JobBook`, one live view
of its 16 shards), and for each job followed (`JobView`) its workers' results, read once and then
pushed by the replicas of its result keys, added up slice by slice (`votes`).

Any node answers for any job this way, its owner's node not needed: the job, its batches and its
results are all in the DHT. The book follows at most `MAX_FOLLOWED` jobs' results at a time (the least
recently asked is dropped), so that asking about many jobs costs bounded memory and listens.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.errors import ServiceError
from dhtmesh.node.jobs.votes import Settled, SliceVotes, Want, count_in, settle, want
from dhtmesh.node.listeners import Listener
from dhtmesh.node.records.directory import LiveView
from dhtmesh.node.records.job import JOB, RESULT, RESULT_TYPE, RESULTS_PER_KEY, JobRecord, ResultRecord, results_key
from dhtmesh.node.records.kind import InvalidRecord
from dhtmesh.node.tasks import Supervisor, TaskSet
from dhtmesh.node.values.value import Value

MAX_FOLLOWED = 64


class TooManyFollowed(ServiceError):
    """A caller asked for more jobs' results than its budget of keys to follow allows."""


def result_keys(job: JobRecord) -> int:
    """How many keys following the job's results takes."""
    return -(-len(job.batches) // RESULTS_PER_KEY)


MAX_ERRORS_SHOWN = 100


@dataclass(frozen=True, slots=True)
class SliceError:
    number: int
    worker: bytes
    error: str


@dataclass(frozen=True, slots=True)
class JobStatus:
    status: str  # running, completed, cancelled, failed
    total: int
    active: int
    completed: int
    failed: int
    cpu_seconds: float
    errors: tuple[SliceError, ...]


class BatchTally:
    """One batch's results and what they add up to, recomputed when a result comes in."""

    def __init__(self, first: int, count: int) -> None:
        self.first = first
        self.count = count
        self.records: dict[bytes, ResultRecord] = {}  # by record id: a result seen twice counts once
        self.votes: dict[int, SliceVotes] = {}
        self.settled: dict[int, Settled] = {}
        self.finished = 0  # slices settled (accepted or failed)
        self.outcomes = 0  # values counted, and the time they took: a slice's average time
        self.cpu_ms = 0

    def add(self, record_id: bytes, record: ResultRecord, job: JobRecord) -> bool:
        if record_id in self.records:
            return False
        self.records[record_id] = record
        limit = job.spec.slice_timeout_ms
        touched = count_in(self.votes, record, self.first, self.count, limit)
        for number in touched:
            before = self.settled.get(number)
            self.settled[number] = settled = settle(job.spec, self.votes[number])
            self.finished += settled.done - (before is not None and before.done)
        valued = [e for e in record.entries if e.number in touched and e.value is not None]  # errors may lie
        self.outcomes += len(valued)
        self.cpu_ms += sum(min(e.cpu_ms, limit) for e in valued)
        return True

    def numbers(self) -> range:
        return range(self.first, self.first + self.count)

    @property
    def done(self) -> bool:
        return self.finished == self.count

    def _open(self, job: JobRecord, now: float) -> Iterator[tuple[int, Want]]:
        """Each unsettled slice and what it still needs, lazily (a settled batch costs no look)."""
        if self.done:
            return
        for n in self.numbers():
            if not self.settled.get(n, Settled()).done:
                yield n, want(job.spec, self.votes.get(n, SliceVotes()), now)

    def wants(self, job: JobRecord, now: float) -> dict[int, Want]:
        """What each unsettled slice of the batch still needs."""
        return dict(self._open(job, now))

    def needs(self, job: JobRecord, worker: bytes, now: float) -> bool:
        """Whether a slice of the batch still needs `worker` (stops at the first that does)."""
        return any(worker not in wanted.excluded for _, wanted in self._open(job, now))

    def rounds_of(self, worker: bytes) -> int:
        return sum(record.worker_id == worker for record in self.records.values())


class JobView:
    """One job as this node follows it: its latest record and every result published for it."""

    def __init__(self, node: DhtNode, job: JobRecord) -> None:
        self._node = node
        self.job = job
        self.tallies = [BatchTally(first, count) for first, count in zip(job.firsts(), job.batches, strict=True)]
        self._listeners: dict[bytes, Listener] = {}
        self._loops = Supervisor(node.counters)
        self._change = asyncio.Event()  # set, and replaced, at each change: waiters hold the one they saw
        self._opened = asyncio.Lock()
        self._read = False
        self._closed = False
        self.users = 0  # result streams reading it now: it is not evicted while one does
        self._learnt: set[tuple[bytes, int]] = set()  # result values taken in, by (signer, id): decoded once

    @property
    def job_id(self) -> bytes:
        return self.job.job_id

    async def open(self) -> None:
        """Read every result key once and follow it (a key for each `RESULTS_PER_KEY` batches)."""
        async with self._opened:
            await self._follow_new_keys()
            self._read = True

    async def close(self) -> None:
        self._closed = True  # a key following that was under way stops short of listening
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        await self._loops.close()

    async def _follow_new_keys(self) -> None:
        if self._closed:
            return
        keys = [results_key(self.job_id, index) for index in range(0, len(self.tallies), RESULTS_PER_KEY)]
        fresh = [key for key in keys if key not in self._listeners]
        for key in fresh:
            listener = self._node.listen(key, capped=False)  # the node's own following: bounded by MAX_FOLLOWED
            self._listeners[key] = listener
            self._loops.start("job_results", lambda listener=listener: self._follow(listener), self.job_id.hex())
        reads = await asyncio.gather(*(self._node.get(key, value_type=RESULT_TYPE) for key in fresh))
        for values in reads:
            for value in values:
                self.learn(value)
                await asyncio.sleep(0)  # many big records: the node answers others between them

    async def _follow(self, listener: Listener) -> None:
        async for event in listener:
            if not event.expired:
                self.learn(event.value)

    def learn(self, value: Value) -> None:
        """Take a (checked) result value into the tally of its batch."""
        if value.type != RESULT_TYPE or (value.owner, value.id) in self._learnt:
            return  # a result is never changed (seq 0, its data fixed): seen once, known
        self._learnt.add((value.owner, value.id))
        try:
            record = RESULT.decode(value.data)
        except InvalidRecord:
            return
        if record.job_id != self.job_id or record.index >= len(self.tallies):
            return
        if self.tallies[record.index].add(RESULT.id_of(record), record, self.job):
            self._notify()

    def take(self, job: JobRecord) -> bool:
        """The job's newer record (more batches, closed, cancelled); whether it has result keys to follow."""
        if job.job_id != self.job_id or len(job.batches) < len(self.tallies):
            return False
        firsts = job.firsts()
        for index in range(len(self.tallies), len(job.batches)):
            self.tallies.append(BatchTally(firsts[index], job.batches[index]))
        self.job = job
        self._notify()
        return self._read

    async def follow_new_keys(self) -> None:
        async with self._opened:
            await self._follow_new_keys()

    def _notify(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def changed(self, within: float) -> None:
        """Return when the view changes, or after `within` seconds."""
        await _wait(self._change, within)

    # ---- what the results add up to -----------------------------------------------------------

    def slice_seconds(self) -> float:
        """The time a slice of this job has taken, on average, by the outcomes in so far (0: none yet)."""
        outcomes = sum(tally.outcomes for tally in self.tallies)
        return sum(tally.cpu_ms for tally in self.tallies) / outcomes / 1000 if outcomes else 0.0

    @property
    def finished(self) -> bool:
        return self.job.cancelled or (self.job.closed and all(tally.done for tally in self.tallies))

    def status(self) -> JobStatus:
        completed = failed = cpu_ms = 0
        errors: list[SliceError] = []
        for tally in self.tallies:
            cpu_ms += sum(votes.cpu_ms for votes in tally.votes.values())
            for settled in tally.settled.values():
                completed += settled.value is not None
                failed += settled.failure is not None
            for number, votes in tally.votes.items():
                errors += [SliceError(number, worker, error) for worker, _, error in votes.errors]
        total = self.job.total_slices
        if self.job.cancelled:
            status = "cancelled"
        elif self.job.closed and completed + failed == total:
            status = "failed" if failed else "completed"
        else:
            status = "running"
        active = 0 if status != "running" else total - completed - failed
        return JobStatus(status, total, active, completed, failed, cpu_ms / 1000, tuple(errors[-MAX_ERRORS_SHOWN:]))

    def values(self, ranges: list[tuple[int, int]] | None = None) -> list[tuple[int, bytes]]:
        """The accepted values of the slices in `ranges` (inclusive; every slice if None), in order: a
        walk over what was settled, never over every number a job lists."""
        found = []
        for tally in self.tallies:
            last = tally.first + tally.count - 1
            if not tally.settled or (ranges is not None and not any(a <= last and tally.first <= b for a, b in ranges)):
                continue
            for n in sorted(tally.settled):
                value = tally.settled[n].value
                if value is not None and (ranges is None or any(a <= n <= b for a, b in ranges)):
                    found.append((n, value))
        return found

    async def accepted(self) -> AsyncIterator[tuple[int, bytes]]:
        """Each slice's accepted value as it comes (those accepted already first); ends when the job is
        finished."""
        sent: set[int] = set()
        self.users += 1
        try:
            while True:
                fresh = [(n, value) for n, value in self.values() if n not in sent]
                for n, value in fresh:
                    sent.add(n)
                    yield n, value
                if self.finished:
                    return
                await self.changed(within=1.0)
        finally:
            self.users -= 1


class JobBook:
    """Every job in the jobs directory, and the results of the jobs this node follows."""

    def __init__(self, node: DhtNode, clock: Callable[[], float] = time.time) -> None:
        self._node = node
        self._followed: OrderedDict[bytes, JobView] = OrderedDict()
        self._directory = LiveView(node, JOB, clock, on_change=self._job_changed)
        self._updates = TaskSet(node.counters)
        self._opening: dict[bytes, asyncio.Task] = {}  # views being opened: their callers await these
        self._change = asyncio.Event()
        self.on_cancel: Callable[[bytes], None] | None = None  # the worker's: stop a cancelled job's slices

    async def close(self) -> None:
        await self._directory.close()
        for view in self._followed.values():
            await view.close()
        self._followed.clear()
        await self._updates.close()

    async def jobs(self) -> list[JobRecord]:
        return await self._directory.records()

    async def job(self, job_id: bytes) -> tuple[int, JobRecord] | None:
        """The job's latest record and its seq, if the mesh has it."""
        return await self._directory.found(job_id)

    def learn(self, value: Value) -> None:
        """A job value this node put: in the view at once, before the directory's replicas echo it."""
        self._directory.learn(value)

    async def view(self, job_id: bytes, admit: Callable[[int], bool] | None = None) -> JobView | None:
        """The job's results, followed (opened on first use, if `admit` allows following as many keys:
        else `TooManyFollowed`). Every caller gets it once it is open: the first caller's opening runs
        on its own, so a caller that gives up (a client gone) cannot leave it half open."""
        view = self._followed.get(job_id)
        if view is None:
            found = await self.job(job_id)
            if found is None:
                return None
            view = self._followed.get(job_id)  # another caller may have opened it meanwhile
            if view is None:
                if admit is not None and not admit(result_keys(found[1])):
                    raise TooManyFollowed("too many jobs' results asked for from this address; retry in a second")
                view = self._followed[job_id] = JobView(self._node, found[1])
                self._opening[job_id] = self._updates.spawn(view.open())
                await self._evict()
        opening = self._opening.get(job_id)
        if opening is not None:
            try:
                await asyncio.shield(opening)
            except Exception:
                await self._forget(job_id, view)  # a later caller opens it anew
                raise
            finally:
                if opening.done():
                    self._opening.pop(job_id, None)
        if job_id in self._followed:
            self._followed.move_to_end(job_id)
        return view

    async def _forget(self, job_id: bytes, view: JobView) -> None:
        if self._followed.get(job_id) is view:
            del self._followed[job_id]
            await view.close()

    async def _evict(self) -> None:
        """Close the least recently asked views past `MAX_FOLLOWED`, but none a stream is reading."""
        idle = [job_id for job_id, view in self._followed.items() if not view.users]
        for job_id in idle[: max(0, len(self._followed) - MAX_FOLLOWED)]:
            await self._forget(job_id, self._followed[job_id])

    def _job_changed(self, job: JobRecord) -> None:
        if job.cancelled and self.on_cancel is not None:
            self.on_cancel(job.job_id)
        view = self._followed.get(job.job_id)
        if view is not None and view.take(job):
            self._updates.spawn(view.follow_new_keys())
        self._change.set()
        self._change = asyncio.Event()

    async def changed(self, within: float) -> None:
        """Return when a job changes (new, more slices, closed, cancelled), or after `within` seconds."""
        await _wait(self._change, within)


async def _wait(event: asyncio.Event, within: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), within)
    except TimeoutError:
        pass
