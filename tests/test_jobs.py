"""Jobs on a mesh of real `dhtmesh run` processes: four workers compute the slices of jobs deployed through
a fifth node with dcp-rest's routes and its Basic credential (the identity file and its password), and
every result is read back, through any node. Workers die, the deploying node dies, bad work functions
fail their slices, a cancelled job stops; none of it loses a slice or stops a node answering.
"""

import base64
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dhtmesh.client import BadAnswer, opened
from dhtmesh.crypto.identity import Identity, save_identity
from dhtmesh.testing import NodeProcess, ProcessGroup
from dhtmesh.testing.waiting import eventually

pytestmark = pytest.mark.process

WORKERS = 4
WORKER = ("--worker", "--slice-memory", "64")  # a memory bomb reaches the limit soon
LIAR = [sys.executable, "-m", "dhtmesh.testing.liar"]
API = "/api/v0"
DOUBLE = "x => x * 2"


@dataclass
class Mesh:
    group: ProcessGroup
    workers: list[NodeProcess]
    gateway: NodeProcess  # not a worker: jobs are deployed through it
    root: Path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("job-mesh")
    group = ProcessGroup(root)
    try:
        first = group.launch("w0", *WORKER)
        workers = [first] + [group.launch(f"w{i}", "-b", first.udp, *WORKER) for i in range(1, WORKERS)]
        gateway = group.launch("gateway", "-b", first.udp)
        yield Mesh(group, workers, gateway, root)
    finally:
        group.stop()


def basic(identity: Identity, where: Path, password: str = "") -> dict[str, str]:
    """dcp-rest's credential: base64 of the identity file's JSON, a colon, its password."""
    path = where / f"{identity.node_id.hex()[:12]}.json"
    save_identity(identity, path, password or None)
    token = base64.b64encode(f"{path.read_text()}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def call(url: str, method: str, path: str, body: Any = None, auth: dict | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url + API + path, json=body, headers=auth or {}) as response:
            text = await response.text()
            return response.status, (await response.json(content_type=None)) if text else None


async def deploy(url: str, auth: dict, body: dict) -> str:
    status, answer = await call(url, "POST", "/job", body, auth)
    assert status == 201, answer
    return answer["jobId"]


async def finished(url: str, job_id: str, within: float = 60) -> dict:
    """The job's status once it is no longer running."""
    found: dict = {}

    async def done() -> bool:
        status, document = await call(url, "GET", f"/job/{job_id}/status")
        found.update(document)
        return status == 200 and document["status"] != "running"

    await eventually(done, within=within, every=0.2)
    return found


async def results(url: str, job_id: str, query: str = "") -> dict:
    status, document = await call(url, "GET", f"/job/{job_id}/result{query}")
    assert status == 200, document
    return document


async def test_four_workers_compute_a_500_slice_job_deployed_through_a_fifth(mesh: Mesh) -> None:
    auth = basic(Identity.generate(), mesh.root)
    job_id = await deploy(mesh.gateway.url, auth, {"work": {"function": DOUBLE}, "slices": list(range(500))})
    assert (await call(mesh.gateway.url, "POST", f"/job/{job_id}/close", None, auth))[0] == 200
    status = await finished(mesh.gateway.url, job_id)
    assert status["status"] == "completed" and status["completedSlices"] == status["totalSlices"] == 500
    document = await results(mesh.workers[2].url, job_id)  # any node answers
    assert [(r["sliceNumber"], r["value"]) for r in document["results"]] == [(n, 2 * (n - 1)) for n in range(1, 501)]
    workers = {error["worker"] for error in status["errors"]}
    assert not workers  # nothing failed


async def test_slices_added_after_deploy_run_and_ranges_return_exactly_what_is_asked(mesh: Mesh) -> None:
    auth = basic(Identity.generate(), mesh.root, password="hunter2")  # unlocked with Argon2id by the node
    job_id = await deploy(mesh.gateway.url, auth, {"work": {"function": "(x, a) => x + a"}, "args": [100]})
    status, added = await call(mesh.gateway.url, "POST", f"/job/{job_id}/slices", {"sliceData": [1, 2, 3]}, auth)
    assert (status, added) == (201, {"added": 3, "totalSlices": 3})
    status, added = await call(mesh.gateway.url, "POST", f"/job/{job_id}/slices", {"sliceData": [4, 5]}, auth)
    assert (status, added) == (201, {"added": 2, "totalSlices": 5})
    await call(mesh.gateway.url, "POST", f"/job/{job_id}/close", None, auth)
    assert (await finished(mesh.gateway.url, job_id))["status"] == "completed"
    some = await results(mesh.gateway.url, job_id, "?range=2-3&range=5-9")
    assert [(r["sliceNumber"], r["value"]) for r in some["results"]] == [(2, 102), (3, 103), (5, 105)]
    one = await results(mesh.gateway.url, job_id, "/4")
    assert one["results"] == [{"sliceNumber": 4, "value": 104}] and one["totalSlices"] == 5
    status, closed = await call(mesh.gateway.url, "POST", f"/job/{job_id}/slices", {"sliceData": [6]}, auth)
    assert status == 409 and "closed" in closed["err"]


async def test_only_the_owner_adds_closes_or_cancels_and_a_bad_credential_is_401(mesh: Mesh) -> None:
    owner, stranger = basic(Identity.generate(), mesh.root), basic(Identity.generate(), mesh.root)
    job_id = await deploy(mesh.gateway.url, owner, {"work": {"function": DOUBLE}})
    for method, path, body in [
        ("POST", f"/job/{job_id}/slices", {"sliceData": [1]}),
        ("POST", f"/job/{job_id}/close", None),
        ("DELETE", f"/job/{job_id}", {}),
    ]:
        status, document = await call(mesh.gateway.url, method, path, body, stranger)
        assert status == 403 and "owner" in document["err"], (path, document)
        status, document = await call(mesh.gateway.url, method, path, body, None)
        assert status == 401 and document["err"], (path, document)
        status, document = await call(mesh.gateway.url, method, path, body, {"Authorization": "Basic !!!"})
        assert status == 401 and document["err"], (path, document)
    wrong = basic(Identity.generate(), mesh.root, password="right")
    wrong["Authorization"] = wrong["Authorization"][:-4] + base64.b64encode(b":bad")[:4].decode()
    status, document = await call(mesh.gateway.url, "POST", "/job", {"work": {"function": DOUBLE}}, wrong)
    assert status == 401, document
    status, mine = await call(mesh.gateway.url, "GET", "/jobs", None, owner)
    assert status == 200 and [job["jobId"] for job in mine] == [job_id]
    assert (await call(mesh.gateway.url, "GET", "/jobs/count", None, stranger))[1] == {"jobCount": 0}


async def test_a_work_function_that_does_not_compile_is_refused_at_deploy(mesh: Mesh) -> None:
    auth = basic(Identity.generate(), mesh.root)
    status, document = await call(mesh.gateway.url, "POST", "/job", {"work": {"function": "x => {"}}, auth)
    assert status == 400 and "SyntaxError" in document["err"]
    status, document = await call(mesh.gateway.url, "POST", "/job", {"work": {"function": "42"}}, auth)
    assert status == 400 and "function" in document["err"]


BAD = """x => {
  if (x === 0) { while (true) {} }
  if (x === 1) { const hoard = []; while (true) hoard.push(new Array(1e6).fill(x)); }
  if (x === 2) { throw new Error("boom " + x); }
  if (x === 3) { return undefined; }
  return x;
}"""


async def test_a_loop_a_memory_bomb_a_throw_and_a_non_json_result_each_fail_their_slice(mesh: Mesh) -> None:
    auth = basic(Identity.generate(), mesh.root)
    body = {"work": {"function": BAD}, "slices": [0, 1, 2, 3, 4], "sliceTimeoutMs": 1000, "maxRetries": 1}
    job_id = await deploy(mesh.gateway.url, auth, body)
    await call(mesh.gateway.url, "POST", f"/job/{job_id}/close", None, auth)
    for worker in mesh.workers:  # every node keeps answering while the sandboxes spin
        async with aiohttp.ClientSession() as session, session.get(worker.url + "/node/info") as response:
            assert response.status == 200
    status = await finished(mesh.gateway.url, job_id, within=90)
    assert status["status"] == "failed" and status["failedSlices"] == 4 and status["completedSlices"] == 1
    codes = {error["sliceNumber"]: error["error"].split(":")[0] for error in status["errors"]}
    assert codes == {1: "ESLICETOOSLOW", 2: "ENOMEM", 3: "EUNCAUGHT", 4: "ENOTJSON"}
    assert all(len([e for e in status["errors"] if e["sliceNumber"] == n]) == 2 for n in codes)  # tried twice
    assert (await results(mesh.gateway.url, job_id))["results"] == [{"sliceNumber": 5, "value": 4}]


async def test_a_cancelled_job_stops_its_running_slices(mesh: Mesh) -> None:
    auth = basic(Identity.generate(), mesh.root)
    spin = "x => { while (true) {} }"
    before = [await counters(worker) for worker in mesh.workers]
    job_id = await deploy(
        mesh.gateway.url, auth, {"work": {"function": spin}, "slices": [1], "sliceTimeoutMs": 600_000}
    )

    async def running() -> bool:
        now = [await counters(worker) for worker in mesh.workers]
        started = "jobs.slices_started"
        return any(n.get(started, 0) > b.get(started, 0) for n, b in zip(now, before, strict=True))

    await eventually(running, within=20)
    status, _ = await call(mesh.gateway.url, "DELETE", f"/job/{job_id}", {"reason": "enough"}, auth)
    assert status == 204

    async def stopped() -> bool:
        now = [await counters(worker) for worker in mesh.workers]
        cancelled = "jobs.batches_cancelled"
        return sum(n.get(cancelled, 0) - b.get(cancelled, 0) for n, b in zip(now, before, strict=True)) >= 1

    await eventually(stopped, within=20)
    assert (await finished(mesh.gateway.url, job_id))["status"] == "cancelled"


async def counters(node: NodeProcess) -> dict:
    async with aiohttp.ClientSession() as session, session.get(node.url + "/node/info") as response:
        return (await response.json())["counters"]


async def test_garbage_on_every_job_route_gets_a_clear_4xx(mesh: Mesh) -> None:
    auth = basic(Identity.generate(), mesh.root)
    url = mesh.gateway.url
    unknown = "ab" * 20
    cases = [
        ("POST", "/job", b"{not json", 400),
        ("POST", "/job", b"[]", 400),
        ("POST", "/job", b'{"work": {"function": 7}}', 400),
        ("POST", "/job", b'{"work": {"function": "x=>x"}, "slices": 5}', 400),
        ("GET", "/job/nothex", None, 400),
        ("GET", f"/job/{unknown}", None, 404),
        ("GET", f"/job/{unknown}/result?range=5-2", None, 400),
        ("GET", f"/job/{unknown}/result/0", None, 400),
        ("POST", f"/job/{unknown}/slices", b'{"sliceData": [1]}', 404),
        ("POST", f"/job/{unknown}/close", b"", 404),
        ("DELETE", f"/job/{unknown}", b"", 404),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, body, expected in cases:
            async with session.request(method, url + API + path, data=body, headers=auth) as response:
                document = await response.json(content_type=None)
                assert response.status == expected and document["err"], (method, path, document)
        async with session.post(url + API + "/job", data=b"{}", headers={"Authorization": "Ed25519 x y z"}) as response:
            assert response.status == 401
    assert (await call(url, "GET", "/accounts"))[1][0]["balance"] == 0


async def test_a_worker_killed_mid_job_loses_no_slice(mesh: Mesh) -> None:
    auth = basic(Identity.generate(), mesh.root)
    busy = "x => { const end = Date.now() + 30; while (Date.now() < end) {} return x + 1; }"
    job_id = await deploy(mesh.gateway.url, auth, {"work": {"function": busy}, "slices": list(range(300))})
    await call(mesh.gateway.url, "POST", f"/job/{job_id}/close", None, auth)

    async def started() -> bool:
        return (await results(mesh.gateway.url, job_id))["completedSlices"] >= 10

    await eventually(started, within=30)
    victim = mesh.workers[-1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    status = await finished(mesh.gateway.url, job_id, within=120)
    assert status["status"] == "completed"
    document = await results(mesh.gateway.url, job_id)
    assert [(r["sliceNumber"], r["value"]) for r in document["results"]] == [(n, n) for n in range(1, 301)]
    mesh.workers[-1] = mesh.group.launch(f"w{WORKERS - 1}", "-b", mesh.workers[0].udp, *WORKER)


async def test_the_deploying_node_killed_the_job_finishes_and_is_read_through_another(
    tmp_path: Path, mesh: Mesh
) -> None:
    deployer = mesh.group.launch("deployer", "-b", mesh.workers[0].udp)
    auth = basic(Identity.generate(), tmp_path)
    busy = "x => { const end = Date.now() + 10; while (Date.now() < end) {} return -x; }"
    job_id = await deploy(deployer.url, auth, {"work": {"function": busy}, "slices": list(range(200))})
    os.kill(deployer.pid, signal.SIGKILL)
    deployer.process.wait(timeout=10)
    other = mesh.gateway.url
    await eventually(lambda: _known(other, job_id), within=20)
    assert (await call(other, "POST", f"/job/{job_id}/close", None, auth))[0] == 200  # the owner, via another node
    status = await finished(other, job_id, within=60)
    assert status["status"] == "completed" and status["completedSlices"] == 200
    document = await results(mesh.workers[0].url, job_id)
    assert [r["value"] for r in document["results"]] == [-n for n in range(200)]


async def _known(url: str, job_id: str) -> bool:
    return (await call(url, "GET", f"/job/{job_id}"))[0] == 200


async def test_results_stream_as_they_complete_then_the_stream_ends(mesh: Mesh) -> None:
    auth = basic(Identity.generate(), mesh.root)
    job_id = await deploy(mesh.gateway.url, auth, {"work": {"function": DOUBLE}, "slices": list(range(50))})
    lines = []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{mesh.gateway.url}{API}/job/{job_id}/results/listen") as response:
            await call(mesh.gateway.url, "POST", f"/job/{job_id}/close", None, auth)
            async for line in response.content:
                lines.append(line)
    numbers = sorted(int(line.split(b'"sliceNumber":')[1].split(b",")[0].rstrip(b"}")) for line in lines)
    assert numbers == list(range(1, 51))


async def test_a_liar_is_outvoted_with_redundancy_3_and_its_standing_shows_it(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    try:
        first = group.launch("h0", "--farmer", "--worker")
        honest = [first] + [group.launch(f"h{i}", "-b", first.udp, "--farmer", "--worker") for i in (1, 2)]
        liar = group.launch("liar", "-b", first.udp, "--farmer", "--worker", program=LIAR)
        auth = basic(Identity.generate(), tmp_path)
        body = {"work": {"function": DOUBLE}, "slices": list(range(40)), "redundancy": 3}
        job_id = await deploy(honest[0].url, auth, body)
        await call(honest[0].url, "POST", f"/job/{job_id}/close", None, auth)
        status = await finished(honest[1].url, job_id, within=90)
        assert status["status"] == "completed"
        document = await results(honest[2].url, job_id)
        assert [r["value"] for r in document["results"]] == [2 * n for n in range(40)]

        async def outvoted() -> bool:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{honest[0].url}/api/farmer/{liar.node_id}") as response:
                    document = await response.json()
                    return response.status == 200 and document["jobs"]["outvoted"] > 0

        await eventually(outvoted, within=30, every=0.5)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{honest[0].url}/api/farmer/{honest[1].node_id}") as response:
                assert (await response.json())["jobs"]["outvoted"] == 0
    finally:
        group.stop()


async def test_a_private_job_results_are_sealed_to_its_owner_and_voted_on_by_digest(mesh: Mesh) -> None:
    owner = Identity.generate()
    auth = basic(owner, mesh.root)
    body = {"work": {"function": "x => ({square: x * x})"}, "slices": list(range(12)), "private": True, "redundancy": 2}
    job_id = await deploy(mesh.gateway.url, auth, body)
    await call(mesh.gateway.url, "POST", f"/job/{job_id}/close", None, auth)
    status = await finished(mesh.gateway.url, job_id)
    assert status["status"] == "completed" and status["private"]
    document = await results(mesh.workers[1].url, job_id)
    assert all(set(r["value"]) == {"digest", "sealed"} for r in document["results"])  # nothing in the clear
    values = [r["value"] for r in opened(owner, job_id, document)["results"]]
    assert values == [{"square": n * n} for n in range(12)]
    with pytest.raises(BadAnswer):
        opened(Identity.generate(), job_id, document)  # anyone else's key opens nothing
