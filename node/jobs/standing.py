"""A worker's standing in jobs: the slices on which its result lost to the majority.

A worker in a slice's majority reports each worker it outvoted (`Reporter`: one signed outvote log per
outvoted worker, its latest reports). A reader (`Standings`) takes no report on trust: it checks up to
`MAX_CHECKED` of a worker's reported slices (each reporter's newest first, reporters in random order,
none dated ahead of the reader's clock) against the job's signed results, read from the mesh, and
counts those where the worker's own signed value lost to a strict majority.
"""

import asyncio
import bisect
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

from dhtmesh.crypto.identity import Identity
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.errors import NodeError
from dhtmesh.node.jobs.view import JobBook, JobView
from dhtmesh.node.jobs.votes import gather, settle
from dhtmesh.node.records.job import RESULT, RESULT_TYPE, results_key
from dhtmesh.node.records.kind import next_seq
from dhtmesh.node.records.outvote import KIND, MAX_ENTRIES, OUTVOTE_TYPE, Outvote, OutvoteLog, outvotes_key
from dhtmesh.node.values.value import InvalidValue

logger = logging.getLogger(__name__)

MAX_CHECKED = 16
MAX_LOGS_KEPT = 256  # outvoted workers a reporter keeps its log of
MAX_LOOKED_AT = 65536  # slices a reporter remembers having looked at (then it forgets the oldest)


@dataclass(frozen=True, slots=True)
class Standing:
    outvoted: int  # reported slices the results prove it lost
    reported: int  # distinct slices reported
    checked: int  # of which were checked (the newest)

    def to_json(self) -> dict:
        return {"outvoted": self.outvoted, "reported": self.reported, "checked": self.checked}


class Reporter:
    """A worker's reports of the workers it outvoted."""

    def __init__(self, node: DhtNode) -> None:
        self._node = node
        self._identity: Identity = node.identity
        self._logs: OrderedDict[bytes, tuple[int, list[Outvote]]] = OrderedDict()  # worker -> (seq, entries)
        self._reported: OrderedDict[tuple[bytes, int], None] = OrderedDict()  # (job, slice) looked at already
        self._scanned: OrderedDict[tuple[bytes, int], int] = OrderedDict()  # batch -> its tally's records then

    async def scan(self, view: JobView) -> None:
        """Report every worker outvoted on a slice of the job where this worker's value won."""
        if view.job.spec.redundancy == 1:
            return  # one result per slice: nobody is outvoted
        me = self._identity.node_id
        fresh: dict[bytes, list[Outvote]] = {}
        now = int(time.time())
        for index, tally in enumerate(view.tallies):
            if self._scanned.get((view.job_id, index)) == len(tally.records):
                continue  # nothing new in this batch since it was looked at
            self._scanned[(view.job_id, index)] = len(tally.records)
            if len(self._scanned) > MAX_LOOKED_AT:
                self._scanned.popitem(last=False)
            for number, settled in tally.settled.items():
                if not settled.outvoted or (view.job_id, number) in self._reported:
                    continue
                if tally.votes[number].values.get(me) != settled.value:
                    continue  # only a worker in the majority reports
                self._reported[(view.job_id, number)] = None
                if len(self._reported) > MAX_LOOKED_AT:
                    self._reported.popitem(last=False)
                for loser in settled.outvoted:
                    fresh.setdefault(loser, []).append(Outvote(view.job_id, number, now))
        await asyncio.gather(*(self._report(loser, entries) for loser, entries in fresh.items()))

    async def _report(self, worker: bytes, entries: list[Outvote]) -> None:
        last, known = self._logs.pop(worker, (-1, []))
        known = (known + entries)[-MAX_ENTRIES:]
        seq = next_seq(last)  # from the clock too: after a restart, above what replicas still hold
        self._logs[worker] = (seq, known)
        while len(self._logs) > MAX_LOGS_KEPT:
            self._logs.popitem(last=False)
        log = OutvoteLog(self._identity.node_id, worker, tuple(known))
        try:
            await self._node.put(outvotes_key(worker), KIND.sign(self._identity, log, seq))
        except (NodeError, InvalidValue) as error:  # reported again with the next outvote of that worker
            self._node.counters.add("jobs.outvote_reports_failed")
            logger.info("outvote report on %s not stored: %s", worker.hex(), error)
            return
        self._node.counters.add("jobs.outvotes_reported", len(entries))


def _to_check(reported: dict[bytes, list[tuple[bytes, int]]]) -> list[tuple[bytes, int]]:
    """At most `MAX_CHECKED` reports: each reporter's newest first, reporters in random order, so that
    one reporter's many made-up reports cannot bury another's proven one."""
    queues = list(reported.values())
    random.shuffle(queues)
    chosen: list[tuple[bytes, int]] = []
    for depth in range(MAX_ENTRIES):
        for reports in queues:
            if depth < len(reports) and reports[depth] not in chosen and len(chosen) < MAX_CHECKED:
                chosen.append(reports[depth])
    return chosen


class Standings:
    """Workers' standings, read and checked."""

    def __init__(self, node: DhtNode, book: JobBook) -> None:
        self._node = node
        self._book = book

    async def of(self, worker: bytes) -> Standing:
        values = await self._node.get(outvotes_key(worker), value_type=OUTVOTE_TYPE)
        now = int(time.time())
        reported: dict[bytes, list[tuple[bytes, int]]] = {}  # reporter -> its reports, newest first
        for log in KIND.records_in(values):
            if log.worker_id == worker:
                entries = sorted((e for e in log.entries if e.time <= now), key=lambda e: -e.time)
                reported[log.reporter_id] = [(entry.job_id, entry.number) for entry in entries]
        distinct = {report for reports in reported.values() for report in reports}
        checked = _to_check(reported)
        proven = await asyncio.gather(*(self._lost(worker, job_id, number) for job_id, number in checked))
        return Standing(sum(proven), len(distinct), len(checked))

    async def _lost(self, worker: bytes, job_id: bytes, number: int) -> bool:
        """Whether the job's signed results show `worker`'s value for the slice outvoted."""
        found = await self._book.job(job_id)
        if found is None:
            return False
        job = found[1]
        firsts = job.firsts()
        index = bisect.bisect_right(firsts, number) - 1
        if index < 0 or number >= firsts[index] + job.batches[index]:
            return False
        values = await self._node.get(results_key(job_id, index), value_type=RESULT_TYPE)
        records = [r for r in RESULT.records_in(values) if r.job_id == job_id and r.index == index]
        votes = gather(records, firsts[index], job.batches[index], job.spec.slice_timeout_ms).get(number)
        return votes is not None and worker in settle(job.spec, votes).outvoted
