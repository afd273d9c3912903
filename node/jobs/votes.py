"""How the results of a batch add up (a pure function of the job's spec and the result records).

Each slice is settled by its workers' results, BOINC's way: a value is accepted once a strict majority
of the job's redundancy r agree on it (canonical JSON, byte for byte; for a private job, its digest);
with no majority among the results in, more workers are asked, up to `cap` of them; an error (a throw,
a timeout, out of memory) is an attempt that failed, and a slice whose errors exceed the job's retries,
seen by as many workers as accept a value, has failed (one worker cannot fail a redundant slice
alone). A worker whose value lost to the accepted one is outvoted.
"""

from collections import Counter
from dataclasses import dataclass, field

from dhtmesh.node.jobs.sealing import ballot, merged
from dhtmesh.node.records.job import JobSpec, ResultRecord

RETRY_GRACE = 5.0  # seconds before a worker may retry a slice it failed itself (others get it first)


def needed(redundancy: int) -> int:
    """Agreeing values that accept a result: a strict majority of the redundancy."""
    return redundancy // 2 + 1


def cap(redundancy: int) -> int:
    """Workers a slice is given to, at most, while they disagree."""
    return 1 if redundancy == 1 else 2 * redundancy + 1


@dataclass(slots=True)
class SliceVotes:
    values: dict[bytes, bytes] = field(default_factory=dict)  # worker -> its latest value
    errors: list[tuple[bytes, int, str]] = field(default_factory=list)  # (worker, time, error)
    tries: Counter[bytes] = field(default_factory=Counter)  # worker -> its errors: kept as they come, not recounted
    last_error: dict[bytes, int] = field(default_factory=dict)  # worker -> the time of its latest error
    cpu_ms: int = 0
    stamps: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # worker -> (time, round) of its value


@dataclass(frozen=True, slots=True)
class Settled:
    """A slice's state: its accepted value, or why it failed, or neither yet."""

    value: bytes | None = None
    failure: str | None = None
    outvoted: tuple[bytes, ...] = ()  # workers whose value lost

    @property
    def done(self) -> bool:
        return self.value is not None or self.failure is not None


@dataclass(frozen=True, slots=True)
class Want:
    """What an unsettled slice still needs: how many more workers at once, and who may not give it."""

    more: int
    excluded: frozenset[bytes]  # workers that gave a value, or failed it within the retry grace


def gather(records: list[ResultRecord], first: int, count: int, limit_ms: int) -> dict[int, SliceVotes]:
    """Every worker's outcome of each slice of a batch (its first slice and count), its latest if it
    gave several."""
    votes: dict[int, SliceVotes] = {}
    for record in records:
        count_in(votes, record, first, count, limit_ms)
    return votes


def count_in(votes: dict[int, SliceVotes], record: ResultRecord, first: int, count: int, limit_ms: int) -> set[int]:
    """Add one result record to a batch's votes (in any order: a worker's latest value by its own time
    and round stands); the slices it touched. Each record costs its own entries only; the time it
    claims for a slice counts up to the slice's limit (`limit_ms`), whatever it says."""
    touched = set()
    stamp = (record.time, record.round)
    for entry in record.entries:
        if not first <= entry.number < first + count:
            continue  # a worker's claim about another batch's slices: not this batch's
        slot = votes.setdefault(entry.number, SliceVotes())
        slot.cpu_ms += min(entry.cpu_ms, limit_ms)
        touched.add(entry.number)
        if entry.value is None:
            slot.errors.append((record.worker_id, record.time, entry.error or ""))
            slot.tries[record.worker_id] += 1
            slot.last_error[record.worker_id] = max(record.time, slot.last_error.get(record.worker_id, 0))
        elif stamp >= slot.stamps.get(record.worker_id, (-1, -1)):
            slot.values[record.worker_id] = entry.value
            slot.stamps[record.worker_id] = stamp
    return touched


def settle(spec: JobSpec, votes: SliceVotes) -> Settled:
    ballots = {worker: ballot(spec.private, value) for worker, value in votes.values.items()}
    counts = Counter(ballots.values())
    if counts:
        winner, agreeing = counts.most_common(1)[0]
        if agreeing >= needed(spec.redundancy):
            agreeing = sorted(w for w, b in ballots.items() if b == winner)
            value = votes.values[agreeing[0]]
            if spec.private:  # every agreeing worker's box: one with a bad box cannot make the value unopenable
                value = merged([votes.values[w] for w in agreeing])
            return Settled(value=value, outvoted=tuple(w for w, b in ballots.items() if b != winner))
    if len(votes.errors) > spec.max_retries and len(votes.tries) >= needed(spec.redundancy):
        return Settled(failure=votes.errors[-1][2])  # a majority's worth of workers saw it fail, not one alone
    if len(votes.values) >= cap(spec.redundancy):
        return Settled(failure=f"ENOMAJORITY: {len(votes.values)} workers gave {len(counts)} different values")
    return Settled()


def want(spec: JobSpec, votes: SliceVotes, now: float) -> Want:
    """What an unsettled slice needs."""
    best = max(Counter(ballot(spec.private, value) for value in votes.values.values()).values(), default=0)
    given = len(votes.values)
    more = max(1, spec.redundancy - given) if given < spec.redundancy else max(1, needed(spec.redundancy) - best)
    recent = {worker for worker, at in votes.last_error.items() if now - at < RETRY_GRACE}
    spent = {worker for worker, count in votes.tries.items() if count > spec.max_retries}  # its own retries used up
    return Want(more, frozenset(votes.values) | recent | spent)
