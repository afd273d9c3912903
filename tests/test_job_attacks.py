"""Attacks on jobs (issue 16), each against real nodes on loopback: a hostile peer with a node of its own
that skips the record rules and puts what it likes, throwaway keys, a web page in the operator's browser,
one host's many requests. Each test performs the attack and asserts what must hold; an attack that works
today is marked `xfail(strict=True)` with the hole it found, and passes once the hole is closed.
"""

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
import msgpack
import orjson
import pytest

from dhtmesh.crypto import Identity
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.jobs import owner
from dhtmesh.node.jobs.sandbox import Cancelled, SandboxPool
from dhtmesh.node.jobs.sealing import open_value, sealed_value
from dhtmesh.node.jobs.standing import MAX_CHECKED
from dhtmesh.node.jobs.view import JobView
from dhtmesh.node.jobs.votes import SliceVotes, settle
from dhtmesh.node.records.job import (
    BATCH,
    JOB,
    JOBS,
    LEASE,
    MAX_BATCH_SLICES,
    MAX_BATCHES,
    NONCE_SIZE,
    RESULT,
    RESULT_TYPE,
    BatchRecord,
    JobRecord,
    JobSpec,
    LeaseRecord,
    ResultRecord,
    SliceResult,
    decode_job,
    job_id_of,
    results_key,
)
from dhtmesh.node.records.kind import FORMAT, SEQ_EPOCH, next_seq, value_id_of
from dhtmesh.node.records.outvote import KIND as OUTVOTE
from dhtmesh.node.records.outvote import Outvote, OutvoteLog, outvotes_key
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.services import Services, Working
from dhtmesh.node.values.value import InvalidValue, Value, sign_value
from dhtmesh.proxy.app import ProxyServer
from dhtmesh.testing import FAST, Mesh, loopback_host
from dhtmesh.testing.waiting import eventually

API = "/api/v0"


def _lenient(key: bytes, value: Value, *, signature: bool = True) -> None:
    value.check(key, signature=signature)  # a value's own check only: no record kind's rule


def _any_life(value: Value) -> float:
    try:
        return RECORD_RULES.lifetime(value)
    except InvalidValue:
        return 600.0


HOSTILE_RULES = replace(RECORD_RULES, check=_lenient, lifetime=_any_life)
"""The rules of a hostile peer's node: it sends records no honest node would, and the mesh must refuse them."""


@dataclass
class JobMesh:
    nodes: list[DhtNode]
    hostile: DhtNode
    services: list[Services]

    async def worker(self, node: DhtNode) -> Services:
        """`node` as a worker (one sandbox), its slots running."""
        services = Services(node, working=Working(sandboxes=1, slice_memory_mib=64))
        self.services.append(services)
        services.run()
        return services

    def reader(self, node: DhtNode) -> Services:
        services = Services(node)
        self.services.append(services)
        return services


@pytest.fixture
async def job_mesh(tmp_path: object) -> AsyncIterator[JobMesh]:
    """Four honest nodes and a hostile one joined to them."""
    mesh = Mesh()
    nodes = await mesh.grow(4)
    hostile = DhtNode(Identity.generate(), FAST, None, rules=HOSTILE_RULES)
    await hostile.start(loopback_host(), 0)
    await hostile.join([nodes[0].address])
    await hostile.lookup(hostile.node_id)
    world = JobMesh(nodes, hostile, [])
    try:
        yield world
    finally:
        for services in world.services:
            await services.stop()
        await hostile.stop()
        await mesh.stop()


async def put_job(node: DhtNode, identity: Identity, body: dict) -> tuple[JobRecord, Value]:
    """Deploy a job as its owner's node does: its batches, then the job; the job and its signed value."""
    values = owner.deploy(identity, owner.parse_deploy(body))
    for value in values[:-1]:
        await node.put(BATCH.key_for(BATCH.decode(value.data)), value)
    await node.put(JOBS.key_for(decode_job(values[-1].data).job_id), values[-1])
    return decode_job(values[-1].data), values[-1]


def result(worker: Identity, job: JobRecord, index: int, entries: list[SliceResult], round_: int = 0) -> Value:
    record = ResultRecord(worker.node_id, job.job_id, index, round_, int(time.time()), tuple(entries))
    return RESULT.sign(worker, record, 0)


IDENTITY = JobSpec("x => x", b"[]")


def phantom(owner_: Identity, batches: tuple[int, ...], spec: JobSpec = IDENTITY) -> JobRecord:
    """A job record listing `batches` that its owner never puts (a job's record is valid without them)."""
    nonce, now = os.urandom(NONCE_SIZE), int(time.time())
    job_id = job_id_of(owner_.node_id, nonce)
    return JobRecord(job_id, owner_.node_id, nonce, now, spec, batches, updated=now, owner_key=owner_.public_key)


async def view_of(services: Services, job: JobRecord) -> JobView:
    async def known() -> bool:
        return await services.jobs.book.job(job.job_id) is not None

    await eventually(known, within=10)
    return await services.jobs.view(job.job_id)


# ---- results that lie ----------------------------------------------------------------------------


@pytest.mark.unit
async def test_forged_results_are_refused_by_every_replica_and_claims_outside_a_batch_count_nowhere(
    job_mesh: JobMesh,
) -> None:
    alice, mallory, honest = Identity.generate(), Identity.generate(), Identity.generate()
    job, _ = await put_job(job_mesh.nodes[0], alice, {"work": {"function": "x => x"}, "slices": list(range(100))})
    assert len(job.batches) > 3
    key = results_key(job.job_id, 0)
    # A result naming an honest worker but signed by mallory; one whose value is not JSON; one under the
    # wrong batch's key (index 0's key holds batches 0-31; this names batch 40).
    as_honest = ResultRecord(honest.node_id, job.job_id, 0, 0, int(time.time()), (SliceResult(1, b"666", None, 1),))
    forged = sign_value(mallory, key, Value(value_id_of(RESULT.id_of(as_honest)), as_honest.encode(), RESULT_TYPE))
    not_json = msgpack.packb([FORMAT, mallory.node_id, job.job_id, 0, 0, int(time.time()), [[1, b"{nope", None, 1]]])
    mine = ResultRecord(mallory.node_id, job.job_id, 0, 0, 0, ())
    bad_value = sign_value(mallory, key, Value(value_id_of(RESULT.id_of(mine)), not_json, RESULT_TYPE))
    elsewhere = ResultRecord(mallory.node_id, job.job_id, 40, 0, int(time.time()), (SliceResult(1, b"666", None, 1),))
    misplaced = sign_value(mallory, key, Value(value_id_of(RESULT.id_of(elsewhere)), elsewhere.encode(), RESULT_TYPE))
    for value in (forged, bad_value, misplaced):
        assert (await job_mesh.hostile.put(key, value)).replicas == 0
    # Valid results of mallory's own, claiming slices of other batches (and slice numbers past the job).
    first_of_1 = job.firsts()[1]
    claims = [SliceResult(n, b"666", None, 1) for n in (first_of_1, first_of_1 + 1, 99_999)]
    assert (await job_mesh.hostile.put(key, result(mallory, job, 0, claims, round_=1))).replicas > 0
    services = job_mesh.reader(job_mesh.nodes[3])
    view = await view_of(services, job)
    assert await job_mesh.nodes[3].get(key, value_type=RESULT_TYPE)  # mallory's own record is there
    assert view.values() == [] and view.status().completed == 0


@pytest.mark.unit
async def test_one_throwaway_key_cannot_fail_a_redundant_slice_or_inflate_its_cpu_time(job_mesh: JobMesh) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    body = {"work": {"function": "x => x"}, "slices": [1, 2, 3], "redundancy": 3, "maxRetries": 3}
    job, _ = await put_job(job_mesh.nodes[0], alice, body)
    repeated = [SliceResult(1, None, "EUNCAUGHT: lies", 3_600_000) for _ in range(job.spec.max_retries + 1)]
    assert (await job_mesh.hostile.put(results_key(job.job_id, 0), result(mallory, job, 0, repeated))).replicas == 0
    once = [SliceResult(1, None, "EUNCAUGHT: lies", 3_600_000)]  # so: one error a record, in as many records
    for round_ in range(1, job.spec.max_retries + 2):  # round 0 is the refused record's id
        assert (await job_mesh.hostile.put(results_key(job.job_id, 0), result(mallory, job, 0, once, round_))).replicas
    services = job_mesh.reader(job_mesh.nodes[2])
    view = await view_of(services, job)
    await eventually(lambda: len(view.tallies[0].records) == job.spec.max_retries + 1, within=10)
    status = view.status()
    assert status.failed == 0  # one worker's errors, however many, do not fail a slice of redundancy 3
    assert status.cpu_seconds <= 4 * 30  # each claimed hour counts as the slice's limit (30 s) at most


# ---- a job's history -------------------------------------------------------------------------------


@pytest.mark.unit
async def test_a_replayed_older_job_version_does_not_hide_its_cancel(job_mesh: JobMesh) -> None:
    alice = Identity.generate()
    job, first = await put_job(job_mesh.nodes[0], alice, {"work": {"function": "x => x"}, "slices": [1, 2]})
    await job_mesh.nodes[0].put(JOBS.key_for(job.job_id), owner.cancelled(alice, first, "stop"))
    key = JOBS.key_for(job.job_id)
    honest = [Contact(node.node_id, *node.address) for node in job_mesh.nodes]
    replays = await asyncio.gather(*(job_mesh.hostile.store_on(c, key, first, 600.0) for c in honest))
    assert not any(replays)  # the open version, seq 0, stored straight on every node: each refuses it
    # A node that never saw the job reads it only now, and a stranger's re-announce of seq 0 meanwhile.
    services = job_mesh.reader(job_mesh.nodes[3])
    found = await services.jobs.book.job(job.job_id)
    assert found is not None and found[1].cancelled
    view = await services.jobs.view(job.job_id)
    assert view.finished and view.status().status == "cancelled"


# ---- leases and fairness (a worker in this process, its sandbox a child process) -------------------


@pytest.mark.process
async def test_a_throwaway_key_squatting_every_lease_does_not_stop_honest_workers(job_mesh: JobMesh) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    job, _ = await put_job(job_mesh.nodes[0], alice, {"work": {"function": "x => x * 2"}, "slices": list(range(4))})
    now = int(time.time() * 1000)
    for index in range(len(job.batches)):  # 300 s each, and renewed before they lapse
        lease = LeaseRecord(mallory.node_id, job.job_id, index, now, now + 300_000)
        assert (await job_mesh.hostile.put(LEASE.key_for(lease), LEASE.sign(mallory, lease, 1))).replicas > 0
    worker = await job_mesh.worker(job_mesh.nodes[1])
    view = await view_of(worker, job)
    await eventually(lambda: view.status().completed == job.total_slices, within=6, every=0.2)


@pytest.mark.process
async def test_one_owners_long_job_does_not_starve_another_owners_job(job_mesh: JobMesh) -> None:
    mallory, alice = Identity.generate(), Identity.generate()
    slow = "x => { const end = Date.now() + 400; while (Date.now() < end) {} return x }"
    await put_job(job_mesh.nodes[0], mallory, {"work": {"function": slow}, "slices": list(range(64))})
    worker = await job_mesh.worker(job_mesh.nodes[1])
    await eventually(lambda: worker.node.counters.get("jobs.slices_started") > 0, within=10)
    small, _ = await put_job(job_mesh.nodes[2], alice, {"work": {"function": "x => x + 1"}, "slices": [1]})
    view = await view_of(worker, small)
    await eventually(lambda: view.status().completed == 1, within=6, every=0.2)


# ---- the sandbox --------------------------------------------------------------------------------------


@pytest.mark.process
async def test_a_work_function_changes_nothing_another_jobs_function_sees() -> None:
    tamper = (
        "function (x) { try { leak = 7 } catch (e) {} try { globalThis.leak = 7 } catch (e) {}"
        " try { Array.prototype.map = () => 'pwn' } catch (e) {} try { JSON.stringify = () => 'pwn' } catch (e) {}"
        " try { Object.prototype.evil = 1 } catch (e) {} try { Math.random = () => 4 } catch (e) {}"
        " try { Error.prepareStackTrace = () => 'pwn' } catch (e) {} setTimeout(() => { globalThis.late = 1 }, 5);"
        " try { __dm('guess', 'idle') } catch (e) {} return 1 }"
    )
    probe = (
        "x => [typeof leak, [1].map(v => v + x), JSON.stringify({a: x}), ({}).evil, Math.random() === 4,"
        " typeof late, String(new Error('e').stack).startsWith('Error: e'), typeof WeakRef, typeof Atomics.waitAsync]"
    )
    pool = SandboxPool(size=1, memory_mib=64, max_slice_ms=2000)
    try:
        outcome = await pool.run(b"t" * 20, tamper, [], [1], 1000)
        assert outcome[0].value == b"1"
        seen = await pool.run(b"p" * 20, probe, [], [2], 1000)
        assert orjson.loads(seen[0].value or b"null") == [
            "undefined", [3], '{"a":2}', None, False, "undefined", True, "function", "undefined"
        ]  # fmt: skip
        # A function that blocks its thread outside V8's loop (Atomics.wait) is stopped at its limit.
        blocked = await pool.run(
            b"w" * 20, "x => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0)", [], [1], 500
        )
        assert (blocked[0].error or "").startswith("ESLICETOOSLOW")
    finally:
        await pool.close()


# ---- the proxy's job routes ------------------------------------------------------------------------


def plain_basic(identity: Identity) -> dict[str, str]:
    """dcp-rest's credential for an identity file with no password (no Argon2id to unlock it)."""
    document = json.dumps(
        {"version": 1, "kind": "ed25519", "seed": base64.b64encode(bytes(identity.signing_key)).decode()}
    )
    return {"Authorization": "Basic " + base64.b64encode(f"{document}:".encode()).decode()}


@pytest.mark.unit
async def test_a_web_pages_post_cannot_deploy_cancel_or_close_a_job(serve) -> None:
    _node, url = await serve()
    auth = plain_basic(Identity.generate())
    page = {"Origin": "https://evil.example", **auth}
    body = {"work": {"function": "x => x"}, "slices": [1]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + API + "/job", data=json.dumps(body), headers=page) as response:
            assert response.status == 403
        async with session.post(url + API + "/job", json=body, headers=auth) as response:
            assert response.status == 201
            job_id = (await response.json())["jobId"]
        for method, path in (("POST", f"/job/{job_id}/close"), ("DELETE", f"/job/{job_id}")):
            async with session.request(method, url + API + path, headers=page) as response:
                assert response.status == 403
        async with session.get(url + API + f"/job/{job_id}/status") as response:
            document = await response.json()
            assert document["status"] == "running" and not document["closed"]


@pytest.mark.unit
async def test_garbage_ranges_and_costly_argon2_credentials_get_4xx_never_work(serve) -> None:
    _node, url = await serve()
    auth = plain_basic(Identity.generate())
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url + API + "/job", json={"work": {"function": "x => x"}, "slices": [1]}, headers=auth
        ) as r:
            job_id = (await r.json())["jobId"]
        for query in ("range=0-1", "range=5-2", "range=1-", "range=-1-2", "range=1-2x", "range=" + "9" * 10 + "-1",
                      "&".join(["range=1-1"] * 65)):  # fmt: skip
            async with session.get(url + API + f"/job/{job_id}/result?{query}") as response:
                assert response.status == 400, query
        async with session.get(url + API + f"/job/{job_id}/result?range=1-999999999") as response:
            assert response.status == 200 and (await response.json())["results"] == []
        # An identity document asking for Argon2id costs above this node's own is refused before any work.
        salt, sealed = base64.b64encode(b"s" * 16).decode(), base64.b64encode(b"x" * 72).decode()
        costly = {"version": 1, "kind": "ed25519", "kdf": "argon2id", "salt": salt, "sealed_seed": sealed}
        costly |= {"opslimit": 1 << 30, "memlimit": 1 << 40}
        token = base64.b64encode(f"{json.dumps(costly)}:pw".encode()).decode()
        started = time.monotonic()
        for _ in range(8):
            async with session.get(url + API + "/jobs", headers={"Authorization": f"Basic {token}"}) as response:
                assert response.status in (401, 429)
        assert time.monotonic() - started < 5  # 8 unlocks at those costs would take minutes


@pytest.mark.unit
async def test_a_job_request_without_a_credential_is_refused_before_its_body_is_read(serve) -> None:
    _node, url = await serve()
    host, port = url.split("//")[1].split(":")
    for method, path in (("GET", f"{API}/jobs"), ("POST", f"{API}/job")):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            head += "Content-Length: 16000000\r\n\r\n"
            writer.write(head.encode())  # and no body: the answer must not wait for it
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 3)
            assert line.split()[1] == b"401", line
        finally:
            writer.close()


@pytest.mark.unit
async def test_one_hosts_slow_deploys_do_not_hold_up_another_hosts_deploy(serve) -> None:
    _node, url = await serve()
    slow = {"work": {"function": "(() => { for (;;) {} })()"}, "slices": [1]}  # evaluating it loops: 1 s each
    finished: list[str] = []

    async def attack(session: aiohttp.ClientSession) -> int:
        async with session.post(url + API + "/job", json=slow, headers=plain_basic(Identity.generate())) as response:
            finished.append("attacker")
            return response.status

    async with aiohttp.ClientSession() as session:
        attacks = [asyncio.create_task(attack(session)) for _ in range(5)]
        await asyncio.sleep(0.2)  # the attacker's requests are in before the honest one
        honest = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
        async with honest:
            body = {"work": {"function": "x => x"}, "slices": [1]}
            async with honest.post(url + API + "/job", json=body, headers=plain_basic(Identity.generate())) as response:
                assert response.status == 201
                finished.append("honest")
        statuses = await asyncio.gather(*attacks)
    # Either the host over its share is refused at once, or the other host is answered first.
    assert 429 in statuses or finished.index("honest") < len(finished) - 1


@pytest.mark.unit
async def test_an_anonymous_status_read_of_a_phantom_job_costs_the_node_little(job_mesh: JobMesh) -> None:
    mallory = Identity.generate()
    ids = []
    for _ in range(3):  # one 4 KiB record each, no batch, no function check: straight onto the wire
        job = phantom(mallory, (1,) * MAX_BATCHES)
        assert (await job_mesh.hostile.put(JOBS.key_for(job.job_id), JOB.sign(mallory, job, 0))).replicas > 0
        ids.append(job.job_id.hex())
    gateway = job_mesh.nodes[0]
    proxy = ProxyServer(gateway, "127.0.0.1", 0)
    await proxy.start()
    try:
        statuses = []
        before = gateway.counters.get("rpc_out")
        async with aiohttp.ClientSession() as session:
            for job_id in ids:
                async with session.get(proxy.url + API + f"/job/{job_id}/status") as response:
                    statuses.append(response.status)
        spent = gateway.counters.get("rpc_out") - before
    finally:
        await proxy.stop()
    assert 429 in statuses or spent < 600, spent  # today: ~2,300 RPCs for each of the three reads


@pytest.mark.unit
async def test_many_result_records_for_one_batch_do_not_block_a_reading_node(job_mesh: JobMesh) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    job = phantom(alice, (MAX_BATCH_SLICES,), JobSpec("x => x", b"[]", redundancy=9, max_retries=16))
    await job_mesh.nodes[0].put(JOBS.key_for(job.job_id), JOB.sign(alice, job, 0))
    count = job.batches[0]
    entries = [SliceResult(n, None, "E", 1) for n in range(1, count + 1)]
    key = results_key(job.job_id, 0)
    for first in range(0, 96, 8):  # a few at a time: the replicas take so many big transfers from a host at once
        rounds = range(first, first + 8)
        puts = await asyncio.gather(*(job_mesh.hostile.put(key, result(mallory, job, 0, entries, r)) for r in rounds))
        assert all(put.replicas > 0 for put in puts)
    reader = job_mesh.reader(job_mesh.nodes[3])
    longest = 0.0

    async def tick() -> None:
        nonlocal longest
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            longest = max(longest, time.monotonic() - before - 0.05)

    ticker = asyncio.create_task(tick())
    try:
        view = await view_of(reader, job)
        await eventually(lambda: len(view.tallies[0].records) == 96, within=30)
    finally:
        ticker.cancel()
    assert longest < 3.0, longest  # the node's loop answered meanwhile (before the fix: ~6 s at once)


@pytest.mark.unit
async def test_one_hosts_flood_of_big_deploys_is_limited(serve) -> None:
    _node, url = await serve()
    slices = ["x" * 20_000]  # kept small here: bigger bodies meet the partial read below

    async def deploy(session: aiohttp.ClientSession) -> int:
        body = {"work": {"function": "x => x.length"}, "slices": slices}
        async with session.post(url + API + "/job", json=body, headers=plain_basic(Identity.generate())) as response:
            return response.status

    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(deploy(session) for _ in range(16)))
    assert set(statuses) <= {201, 429} and 429 in statuses, statuses


@pytest.mark.unit
async def test_a_job_body_that_arrives_in_two_pieces_is_read_whole(serve) -> None:
    _node, url = await serve()
    host, port = url.split("//")[1].split(":")
    body = orjson.dumps({"work": {"function": "x => x"}, "slices": [1, 2, 3]})
    head = f"POST {API}/job HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    auth = plain_basic(Identity.generate())["Authorization"]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"{head}Authorization: {auth}\r\nConnection: close\r\n\r\n".encode() + body[:20])
        await writer.drain()
        await asyncio.sleep(0.3)  # a slow network: the rest comes a little later
        writer.write(body[20:])
        await writer.drain()
        status = (await asyncio.wait_for(reader.readline(), 10)).split()[1]
    finally:
        writer.close()
    assert status == b"201"


@pytest.mark.unit
async def test_a_liar_cannot_bury_its_proven_outvotes_under_made_up_reports(job_mesh: JobMesh) -> None:
    alice, honest, second, liar, accomplice = (Identity.generate() for _ in range(5))
    body = {"work": {"function": "x => x * 2"}, "slices": [1], "redundancy": 3}
    job, _ = await put_job(job_mesh.nodes[0], alice, body)
    for worker, value in ((honest, b"2"), (second, b"2"), (liar, b"666")):
        await job_mesh.nodes[1].put(
            results_key(job.job_id, 0), result(worker, job, 0, [SliceResult(1, value, None, 1)])
        )
    now = int(time.time())
    report = OutvoteLog(honest.node_id, liar.node_id, (Outvote(job.job_id, 1, now),))
    await job_mesh.nodes[1].put(outvotes_key(liar.node_id), OUTVOTE.sign(honest, report, 0))
    reader = job_mesh.reader(job_mesh.nodes[3])
    await view_of(reader, job)
    assert (await reader.standings.of(liar.node_id)).outvoted == 1  # proven by the job's signed results
    made_up = tuple(Outvote(os.urandom(20), 1, now + 30) for _ in range(MAX_CHECKED))
    cover = OutvoteLog(accomplice.node_id, liar.node_id, made_up)
    assert (await job_mesh.hostile.put(outvotes_key(liar.node_id), OUTVOTE.sign(accomplice, cover, 0))).replicas > 0
    assert (await reader.standings.of(liar.node_id)).outvoted == 1


@pytest.mark.unit
@pytest.mark.xfail(
    strict=True,
    reason="HOLE (Sybil, by design today): node/jobs/votes.py settle counts signers, and keys are free: two "
    "throwaway keys from one host agree on a made-up value and it is a redundancy-3 job's accepted result",
)
async def test_two_throwaway_keys_from_one_host_do_not_decide_a_redundant_slice(job_mesh: JobMesh) -> None:
    alice = Identity.generate()
    job, _ = await put_job(
        job_mesh.nodes[0], alice, {"work": {"function": "x => x * 2"}, "slices": [1], "redundancy": 3}
    )
    for sybil in (Identity.generate(), Identity.generate()):
        made_up = result(sybil, job, 0, [SliceResult(1, b"666", None, 1)])
        assert (await job_mesh.hostile.put(results_key(job.job_id, 0), made_up)).replicas > 0
    reader = job_mesh.reader(job_mesh.nodes[3])
    view = await view_of(reader, job)
    assert view.values() != [(1, b"666")]


@pytest.mark.unit
async def test_reading_the_results_of_a_job_listing_millions_of_slices_costs_little(job_mesh: JobMesh) -> None:
    mallory = Identity.generate()
    job = phantom(mallory, (MAX_BATCH_SLICES,) * MAX_BATCHES)  # 4,194,304 slices in a 12 KiB record
    assert (await job_mesh.hostile.put(JOBS.key_for(job.job_id), JOB.sign(mallory, job, 0))).replicas > 0
    proxy = ProxyServer(job_mesh.nodes[0], "127.0.0.1", 0)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            path = proxy.url + API + f"/job/{job.job_id.hex()}/result"
            async with session.get(path) as response:  # the view opened once
                assert response.status == 200
            started = time.monotonic()
            for _ in range(10):
                async with session.get(path) as response:
                    assert (await response.json())["results"] == []
            spent = time.monotonic() - started
    finally:
        await proxy.stop()
    assert spent < 0.5, spent  # ten reads of no result at all (today: ~1.5 s of the node's loop)


# ---- found in review -------------------------------------------------------------------------------


@pytest.mark.process
async def test_a_squatter_re_signing_its_leases_with_a_fresh_start_does_not_stop_honest_workers(
    job_mesh: JobMesh,
) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    job, _ = await put_job(job_mesh.nodes[0], alice, {"work": {"function": "x => x * 2"}, "slices": list(range(4))})

    async def squat() -> None:
        seq = 1
        while True:  # a fresh `since` every second: the lease's own word on its age
            now = int(time.time() * 1000)
            for index in range(len(job.batches)):
                lease = LeaseRecord(mallory.node_id, job.job_id, index, now, now + 300_000)
                await job_mesh.hostile.put(LEASE.key_for(lease), LEASE.sign(mallory, lease, seq))
            seq += 1
            await asyncio.sleep(1.0)

    squatting = asyncio.create_task(squat())
    try:
        await asyncio.sleep(0.5)
        worker = await job_mesh.worker(job_mesh.nodes[1])
        view = await view_of(worker, job)
        await eventually(lambda: view.status().completed == job.total_slices, within=10, every=0.2)
    finally:
        squatting.cancel()
        await asyncio.gather(squatting, return_exceptions=True)


@pytest.mark.process
async def test_a_job_whose_function_does_not_compile_put_past_the_deploy_check_does_not_crash_a_worker(
    job_mesh: JobMesh,
) -> None:
    alice = Identity.generate()
    bad = phantom(alice, (1,), JobSpec("x => x +", b"[]"))
    batch = BatchRecord(bad.job_id, alice.node_id, 0, int(time.time()), (b"1",))
    await job_mesh.nodes[0].put(BATCH.key_for(batch), BATCH.sign(alice, batch, 0))
    await job_mesh.nodes[0].put(JOBS.key_for(bad.job_id), JOB.sign(alice, bad, 0))
    worker = await job_mesh.worker(job_mesh.nodes[1])
    await eventually(lambda: worker.node.counters.get("jobs.broken_functions") >= 1, within=10)
    good, _ = await put_job(job_mesh.nodes[0], alice, {"work": {"function": "x => x + 1"}, "slices": [1, 2]})
    view = await view_of(worker, good)
    await eventually(lambda: view.status().completed == 2, within=10, every=0.2)  # the worker goes on
    assert worker.node.counters.get("loop_failed.job_slot") == 0
    assert worker.node.counters.get("jobs.broken_functions") == 1  # left alone, not retried in a loop


@pytest.mark.unit
async def test_concurrent_readers_of_a_job_each_get_it_once_its_results_are_read(job_mesh: JobMesh) -> None:
    alice, worker = Identity.generate(), Identity.generate()
    job, value = await put_job(job_mesh.nodes[0], alice, {"work": {"function": "x => x"}, "slices": [1, 2]})
    await job_mesh.nodes[0].put(JOBS.key_for(job.job_id), owner.closed(alice, value))
    for index, first in enumerate(job.firsts()):
        done = [SliceResult(first, b"7", None, 1)]
        await job_mesh.nodes[0].put(results_key(job.job_id, index), result(worker, job, index, done))
    reader = job_mesh.reader(job_mesh.nodes[3])
    await eventually(lambda: reader.jobs.book.job(job.job_id), within=10)
    views = await asyncio.gather(*(reader.jobs.view(job.job_id) for _ in range(4)))
    assert [view.status().status for view in views] == ["completed"] * 4


@pytest.mark.unit
async def test_a_signed_read_is_not_waited_for_at_a_changes_body_size(serve) -> None:
    _node, url = await serve()
    async with aiohttp.ClientSession() as session:
        headers = {**plain_basic(Identity.generate()), "Content-Length": str(10**6)}
        async with session.get(url + API + "/jobs", data=b"x" * 10**6, headers=headers) as response:
            assert response.status == 413


@pytest.mark.process
async def test_a_run_of_a_job_cancelled_before_it_reached_the_pool_stops_at_once() -> None:
    pool = SandboxPool(size=1, memory_mib=64)
    try:
        pool.cancel(b"j" * 20)
        with pytest.raises(Cancelled):
            await pool.run(b"j" * 20, "x => { while (true) {} }", [], [1], 600_000)
    finally:
        await pool.close()


def test_a_private_slice_stays_openable_when_one_agreeing_worker_sealed_garbage() -> None:
    alice = Identity.generate()
    job = phantom(alice, (1,), JobSpec("x => x", b"[]", redundancy=3, private=True))
    honest = sealed_value(job, 1, b"42")
    garbage = orjson.loads(honest) | {"sealed": base64.b64encode(b"\0" * 80).decode()}
    votes = SliceVotes(values={b"a" * 20: orjson.dumps(garbage), b"b" * 20: honest})
    accepted = settle(job.spec, votes).value
    assert accepted is not None
    assert open_value(alice, job.job_id, 1, orjson.loads(accepted)) == 42


def test_lease_and_report_seqs_fit_32_bits_for_years() -> None:
    assert next_seq(-1, now=time.time()) < next_seq(-1, now=time.time() + 1)
    assert next_seq(-1, now=2_150_000_000) < 2**32  # 2038
    assert next_seq(10**6, now=SEQ_EPOCH) == 10**6 + 1
