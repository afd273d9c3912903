"""A worker's leases on batches: taking one (only while fewer than the batch needs are held by others,
then looking again), renewing it while the batch runs, giving it back; and which of the others'
leases to honour.

A lease is a claim, not a proof of work: it is honoured for twice the time its batch should take (by
the job's own results so far; before there are any, `UNKNOWN_HOLD`: an idle worker then computes a
slow first batch again, which beats waiting on a claim nobody can check), at least `MIN_HOLD`,
counted from when this worker first saw it (the signer's `since` is its own word: a key
that re-signs with a fresh one every second gains nothing). Past that the batch is taken anyway; the
work counts once.
"""

import asyncio
import logging
import time
from collections import OrderedDict

from dhtmesh.crypto.identity import Identity
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.errors import NodeError
from dhtmesh.node.jobs.view import JobView
from dhtmesh.node.records.job import LEASE, LEASE_TYPE, LeaseRecord, lease_key
from dhtmesh.node.records.kind import next_seq
from dhtmesh.node.values.value import InvalidValue

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0
MIN_HOLD = 4.0
UNKNOWN_HOLD = 4.0  # seconds a lease is honoured before the job has any value to judge its batches' time by
SEEN_KEPT = 65536  # leases whose first sight a worker remembers (then it forgets the oldest)

Batch = tuple[bytes, int]


def max_hold(slice_seconds: float, count: int) -> float:
    """Seconds a lease on a batch of `count` slices is honoured (see the module's docstring)."""
    return max(MIN_HOLD, 2 * slice_seconds * count + 1) if slice_seconds > 0 else UNKNOWN_HOLD


class Leases:
    def __init__(self, node: DhtNode) -> None:
        self._node = node
        self._identity: Identity = node.identity
        self._held: dict[Batch, tuple[int, int]] = {}  # batch -> (last seq, since) of this worker's lease
        self._seen: OrderedDict[tuple[bytes, bytes, int], float] = OrderedDict()  # (worker, batch) -> first seen

    async def take(self, view: JobView, index: int, wanted: int) -> float | None:
        """Lease the batch, unless workers that took it first (by start, then id) hold `wanted` honoured
        leases on it already (then give it back): of two workers that took a batch at one instant, one
        computes it. None if taken; else when a lease in the way lapses or stops being honoured."""
        # Put first, then look: one put and one get a batch (a batch is rarely contended; when it is, the
        # lease is given back at the cost of one more put).
        await self.put(view.job_id, index, LEASE_SECONDS)
        mine = (self._held[(view.job_id, index)][1], self._identity.node_id)
        others = [lease for lease in await self.others(view, index) if (lease.since, lease.worker_id) < mine]
        if len(others) < wanted:
            return None
        await self.give_back(view.job_id, index)
        hold = self._hold(view, index)
        return min(min(lease.until / 1000, self._first_seen(lease, time.time()) + hold) for lease in others)

    @staticmethod
    def _hold(view: JobView, index: int) -> float:
        return max_hold(view.slice_seconds(), view.tallies[index].count)

    async def others(self, view: JobView, index: int) -> list[LeaseRecord]:
        """The live leases other workers hold on the batch that this worker honours."""
        now = time.time()
        values = await self._node.get(lease_key(view.job_id, index), value_type=LEASE_TYPE)
        hold = self._hold(view, index)
        live = [
            lease
            for lease in LEASE.records_in(values)
            if lease.worker_id != self._identity.node_id
            and lease.job_id == view.job_id
            and lease.index == index
            and lease.live(now)
        ]
        return [lease for lease in live if now - self._first_seen(lease, now) <= hold]

    def _first_seen(self, lease: LeaseRecord, now: float) -> float:
        key = (lease.worker_id, lease.job_id, lease.index)
        seen = self._seen.setdefault(key, now)
        if len(self._seen) > SEEN_KEPT:
            self._seen.popitem(last=False)
        return min(seen, lease.since / 1000)

    async def put(self, job_id: bytes, index: int, seconds: float) -> None:
        """This worker's lease on the batch until `seconds` from now (0: given back)."""
        now = int(time.time() * 1000)
        last, since = self._held.get((job_id, index), (-1, now))
        seq = next_seq(last)
        self._held[(job_id, index)] = (seq, since)
        lease = LeaseRecord(self._identity.node_id, job_id, index, since, max(since + 1, now + int(seconds * 1000)))
        try:
            await self._node.put(lease_key(job_id, index), LEASE.sign(self._identity, lease, seq))
        except BaseException:
            if last < 0:
                self._held.pop((job_id, index), None)  # never taken: its `since` must not outlive this
            raise

    async def renew(self, job_id: bytes, index: int) -> None:
        """Renew the lease until cancelled (the batch's run ends)."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await self.put(job_id, index, LEASE_SECONDS)
            except (NodeError, InvalidValue) as error:  # the next renewal may pass; else it lapses, harmlessly
                self._node.counters.add("jobs.lease_renewals_failed")
                log.info("lease on batch %d of job %s not renewed: %s", index, job_id.hex(), error)

    def drop(self, job_id: bytes, index: int) -> None:
        """Forget the lease without giving it back (the batch is settled: nobody needs it; it lapses)."""
        self._held.pop((job_id, index), None)

    async def give_back(self, job_id: bytes, index: int) -> None:
        """End the lease now, so the batch may go on elsewhere (if this fails, it lapses by itself)."""
        try:
            await self.put(job_id, index, 0.0)
        except (NodeError, InvalidValue) as error:
            self._node.counters.add("jobs.leases_not_given_back")
            log.info("lease on batch %d of job %s lapses instead: %s", index, job_id.hex(), error)
        finally:
            self._held.pop((job_id, index), None)
