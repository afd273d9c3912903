"""Outvote logs: the slices on which a worker's result lost to the majority, as workers that were in
that majority saw it, signed by them.

Each reporter keeps one value per outvoted worker under the worker's outvote key (value id from the
reporter's id), listing its latest `MAX_ENTRIES` reports (job, slice, time), newest last. A report is
only a claim: whoever reads a worker's reputation checks it against the job's signed results
(`jobs.standing`), so a throwaway key cannot condemn a worker that was never outvoted.
"""

import time
from dataclasses import dataclass

from dhtmesh.crypto.keys import NODE_ID_SIZE
from dhtmesh.node.records.job import JOB_ID_SIZE, MAX_BATCH_SLICES, MAX_BATCHES
from dhtmesh.node.records.keys import reserved_key
from dhtmesh.node.records.kind import CLOCK_SKEW, InvalidRecord, RecordKind, pack, unpack, well_sized
from dhtmesh.node.values.types import DAY

OUTVOTE_TYPE = 0x4A76
OUTVOTE_EXPIRY = 1 * DAY
MAX_ENTRIES = 32


@dataclass(frozen=True, slots=True)
class Outvote:
    job_id: bytes
    number: int  # the slice
    time: int

    def to_wire(self) -> list:
        return [self.job_id, self.number, self.time]


@dataclass(frozen=True, slots=True)
class OutvoteLog:
    reporter_id: bytes
    worker_id: bytes
    entries: tuple[Outvote, ...]

    def encode(self) -> bytes:
        return pack(self.reporter_id, self.worker_id, [entry.to_wire() for entry in self.entries])


def outvotes_key(worker_id: bytes) -> bytes:
    return reserved_key(OUTVOTE_TYPE, b"dhtmesh/outvotes/", worker_id)


def _entry(raw: object) -> Outvote:
    if not (isinstance(raw, list) and len(raw) == 3):
        raise InvalidRecord("an outvote has 3 fields")
    job_id, number, at = raw
    well_formed = (
        well_sized(((job_id, JOB_ID_SIZE),))
        and type(number) is int
        and 1 <= number <= MAX_BATCHES * MAX_BATCH_SLICES
        and type(at) is int
        and 0 <= at <= time.time() + CLOCK_SKEW
    )
    if not well_formed:
        raise InvalidRecord("malformed outvote")
    return Outvote(job_id, number, at)


def decode_outvote_log(data: bytes) -> OutvoteLog:
    reporter_id, worker_id, entries = unpack(data, "outvote log", 3)
    if not well_sized(((reporter_id, NODE_ID_SIZE), (worker_id, NODE_ID_SIZE))) or reporter_id == worker_id:
        raise InvalidRecord("reporter and worker ids are 20 bytes, and differ")
    if not (isinstance(entries, list) and 0 < len(entries) <= MAX_ENTRIES):
        raise InvalidRecord(f"an outvote log has 1 to {MAX_ENTRIES} entries")
    return OutvoteLog(reporter_id, worker_id, tuple(_entry(raw) for raw in entries))


KIND = RecordKind(
    OUTVOTE_TYPE, OUTVOTE_EXPIRY, "an outvote log", decode_outvote_log, lambda log: log.reporter_id,
    key_of=lambda log: outvotes_key(log.worker_id), signer="its reporter",
    anchor=lambda log: max(entry.time for entry in log.entries),
)  # fmt: skip
