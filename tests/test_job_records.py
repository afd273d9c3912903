"""A job's records as every hop checks them (a job's id bound to its owner, batches and results signed
by who they name, a job's next version keeping what it was deployed with), the owner's side (dcp-rest
bodies, batches), and how results add up to a slice's value (votes)."""

import time
from dataclasses import replace

import orjson
import pytest

from dhtmesh.crypto import Identity
from dhtmesh.node.jobs import owner
from dhtmesh.node.jobs.votes import Settled, SliceVotes, gather, settle, want
from dhtmesh.node.records.job import (
    BATCH,
    JOB,
    LEASE,
    MAX_BATCH_BYTES,
    RESULT,
    BatchRecord,
    JobSpec,
    LeaseRecord,
    ResultRecord,
    SliceResult,
    decode_job,
    job_follows,
)
from dhtmesh.node.records.kind import InvalidRecord
from dhtmesh.node.records.rules import check_value
from dhtmesh.node.values.value import InvalidValue

pytestmark = pytest.mark.unit

DOUBLE = {"work": {"function": "x => x * 2"}, "slices": list(range(100))}


def deployed(identity: Identity, body: dict = DOUBLE) -> list:
    return owner.deploy(identity, owner.parse_deploy(body), now=1_800_000_000 - 10**8)


def check(value) -> None:
    kind = {JOB.type: JOB, BATCH.type: BATCH, LEASE.type: LEASE, RESULT.type: RESULT}[value.type]
    check_value(kind.key_for(kind.decode(value.data)), value)


def test_a_deployed_job_is_its_batches_then_itself_every_record_passing_every_hop() -> None:
    alice = Identity.generate()
    values = deployed(alice)
    for value in values:
        check(value)
    job = decode_job(values[-1].data)
    assert job.owner_id == alice.node_id and job.total_slices == 100 and len(job.batches) == len(values) - 1
    assert job.firsts()[:3] == [1, 1 + job.batches[0], 1 + job.batches[0] + job.batches[1]]
    data = [d for value in values[:-1] for d in BATCH.decode(value.data).data]
    assert [orjson.loads(d) for d in data] == list(range(100))


def test_nobody_but_the_owner_signs_under_a_job_id() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    job = decode_job(deployed(alice)[-1].data)
    forged = JOB.sign(mallory, replace(job, owner_id=mallory.node_id), 1)  # the id no longer matches the owner
    with pytest.raises(InvalidRecord, match="owner"):
        check(forged)
    under_alice = BATCH.sign(mallory, BatchRecord(job.job_id, alice.node_id, 0, 1, (b"1",)), 0)
    with pytest.raises(InvalidValue):
        check(under_alice)  # a batch naming alice as owner, signed by mallory


def test_a_job_next_version_only_adds_batches_and_raises_flags() -> None:
    alice = Identity.generate()
    first = deployed(alice)[-1]
    job = decode_job(first.data)
    more = decode_job(owner.add_slices(alice, first, [b"1", b"2"], now=job.updated + 1)[-1].data)
    assert job_follows(job, more) and more.total_slices == 102
    closed = decode_job(owner.closed(alice, first).data)
    assert job_follows(job, closed) and not job_follows(closed, job)  # never reopened
    assert not job_follows(job, replace(job, spec=replace(job.spec, function="x => 0")))
    assert not job_follows(more, replace(more, batches=more.batches[1:]))


def test_dcp_rest_bodies_are_read_or_refused_with_a_reason() -> None:
    spec = owner.parse_deploy({"work": {"function": "(x, a) => x + a"}, "args": [1], "redundancy": 3}).spec
    assert spec == JobSpec("(x, a) => x + a", b"[1]", redundancy=3)
    for body, reason in [
        ([], "object"),
        ({"work": {}}, "work.function"),
        ({"work": {"function": "f", "runtime": {"name": "pyodide"}}}, "runtime"),
        ({"work": {"function": "f"}, "args": {}}, "args"),
        ({"work": {"function": "f"}, "redundancy": 0}, "redundancy"),
        ({"work": {"function": "f"}, "slices": "abc"}, "slices"),
        ({"work": {"function": "f"}, "slices": ["x" * MAX_BATCH_BYTES]}, "datum"),
    ]:
        with pytest.raises(owner.BadJob, match=reason):
            owner.parse_deploy(body)
    with pytest.raises(owner.BadJob, match="sliceData"):
        owner.parse_slices({"sliceData": []})


def test_slices_are_cut_into_batches_that_spread_and_fit_a_value() -> None:
    assert [len(b) for b in owner.cut([b"1"] * 10)] == [1] * 10
    assert len(owner.cut([b"1"] * 10_000)) == 40  # 250 each
    big = [b'"' + b"x" * 20_000 + b'"'] * 5
    assert all(sum(map(len, batch)) <= MAX_BATCH_BYTES for batch in owner.cut(big))


def test_a_closed_job_takes_no_more_slices() -> None:
    alice = Identity.generate()
    closed = owner.closed(alice, deployed(alice)[-1])
    with pytest.raises(owner.JobClosed):
        owner.add_slices(alice, closed, [b"1"])


def test_leases_and_results_are_checked_at_every_hop() -> None:
    worker, alice = Identity.generate(), Identity.generate()
    job_id = decode_job(deployed(alice)[-1].data).job_id
    lease = LeaseRecord(worker.node_id, job_id, 0, 1_000_000, 1_010_000)
    check(LEASE.sign(worker, lease, 1))
    with pytest.raises(InvalidRecord, match="within"):
        check(LEASE.sign(worker, replace(lease, until=int((time.time() + 3600) * 1000)), 1))
    result = ResultRecord(worker.node_id, job_id, 0, 0, 1_000, (SliceResult(1, b"2", None, 3),))
    check(RESULT.sign(worker, result, 0))
    with pytest.raises(InvalidRecord, match="JSON"):
        check(RESULT.sign(worker, replace(result, entries=(SliceResult(1, b"{nope", None, 3),)), 0))
    with pytest.raises(InvalidRecord, match="value or an error"):
        check(RESULT.sign(worker, replace(result, entries=(SliceResult(1, b"1", "E", 3),)), 0))
    with pytest.raises(InvalidValue):
        check(RESULT.sign(alice, result, 0))  # in the worker's name, signed by another


def _result(worker: bytes, number: int, value: bytes | None, error: str | None = None, at: int = 1) -> ResultRecord:
    return ResultRecord(worker, b"j" * 20, 0, 0, at, (SliceResult(number, value, error, 5),))


def test_a_strict_majority_accepts_a_value_and_the_minority_is_outvoted() -> None:
    spec = JobSpec("f", b"[]", redundancy=3)
    a, b, c = b"a" * 20, b"b" * 20, b"c" * 20
    votes = gather([_result(a, 1, b"2"), _result(b, 1, b"3")], 1, 1, 30_000)[1]
    assert settle(spec, votes) == Settled() and want(spec, votes, 0).more == 1  # one more worker breaks the tie
    votes = gather([_result(a, 1, b"2"), _result(b, 1, b"3"), _result(c, 1, b"2")], 1, 1, 30_000)[1]
    assert settle(spec, votes) == Settled(value=b"2", outvoted=(b,))
    assert gather([_result(a, 7, b"2")], 1, 1, 30_000) == {}  # a claim about a slice outside the batch


def test_errors_past_the_retries_fail_a_slice_and_the_worker_that_failed_waits_its_turn() -> None:
    spec = JobSpec("f", b"[]", max_retries=1)
    a, b = b"a" * 20, b"b" * 20
    once = gather([_result(a, 1, None, "EUNCAUGHT: boom", at=100)], 1, 1, 30_000)[1]
    assert settle(spec, once) == Settled() and a in want(spec, once, 101).excluded
    assert a not in want(spec, once, 200).excluded  # after the grace, even a lone worker may retry
    twice = gather([_result(a, 1, None, "EUNCAUGHT: boom"), _result(b, 1, None, "ESLICETOOSLOW: 30 s")], 1, 1, 30_000)[
        1
    ]
    assert settle(spec, twice).failure == "ESLICETOOSLOW: 30 s"


def test_a_slice_its_workers_never_agree_on_fails_at_the_cap() -> None:
    spec = JobSpec("f", b"[]", redundancy=2)
    votes = SliceVotes(values={bytes([i]) * 20: str(i).encode() for i in range(5)})
    assert settle(spec, votes).failure.startswith("ENOMAJORITY")
