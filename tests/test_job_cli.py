"""Jobs as their owner drives them (issue 16): `dhtmesh job` and the client's job routes against real
`dhtmesh run` processes on loopback, through their real proxies. The owner's records are built and
signed on the client's side and carried in signed requests; the node only checks and stores them.

One mesh of two nodes, with no worker, serves most tests: a job stays running, so what its owner does
to it (close, cancel, add slices) is what its status shows. Every command runs with `$XDG_DATA_HOME`
set to the mesh's root, where the first node's data directory is the default one, as in test_cli. The
last test has a mesh of its own, with a worker, and waits for a job to be computed.
"""

import asyncio
import base64
import json
import os
import pty
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from dhtmesh.api import paths
from dhtmesh.client import BadJob, Client
from dhtmesh.crypto.identity import Identity
from dhtmesh.node.records.job import decode_job
from dhtmesh.testing import DHTMESH, NodeProcess, ProcessGroup, eventually, run_cli

from support import assert_one_line_error, new_identity

pytestmark = pytest.mark.process

DOUBLE = "x => x * 2"


@dataclass
class Mesh:
    group: ProcessGroup
    seed: NodeProcess  # its data directory is the default one: $XDG_DATA_HOME/dhtmesh
    other: NodeProcess

    def cli(self, *args: str, timeout: float = 30.0, **env: str) -> subprocess.CompletedProcess:
        env = {"XDG_DATA_HOME": str(self.group.root), "DHTMESH_URL": ""} | env
        return run_cli(*args, timeout=timeout, env=env)


async def joined(url: str) -> bool:
    async with Client(url) as client:
        return (await client.info())["ipv4"]["good"] >= 1


def two_nodes(root: Path, *other_options: str) -> Iterator[Mesh]:
    group = ProcessGroup(root)
    try:
        seed = group.launch("dhtmesh")
        other = group.launch("other", "-b", seed.udp, *other_options)
        asyncio.run(eventually(lambda: joined(other.url)))
        yield Mesh(group, seed, other)
    finally:
        group.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from two_nodes(tmp_path_factory.mktemp("job-mesh"))


@pytest.fixture
def working_mesh(tmp_path: Path) -> Iterator[Mesh]:
    """Two nodes, the second a worker."""
    yield from two_nodes(tmp_path / "working-mesh", "--worker")


def submitted(result: subprocess.CompletedProcess) -> str:
    """The job id `job submit` printed."""
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.splitlines()[0]
    assert len(job_id) == 40 and int(job_id, 16) >= 0, result.stdout
    return job_id


def document(result: subprocess.CompletedProcess) -> dict | list:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_submit_deploys_and_closes_a_job_its_owner_cancels(mesh: Mesh) -> None:
    job_id = submitted(mesh.cli("job", "submit", "--url", mesh.seed.url, "--function", DOUBLE, "--slices", "[1,2,3]"))
    status = document(mesh.cli("job", "status", "--url", mesh.other.url, job_id))  # any node reads it
    assert status["status"] == "running" and status["closed"] is True, status
    assert (status["totalSlices"], status["completedSlices"]) == (3, 0), status
    results = document(mesh.cli("job", "results", "--url", mesh.other.url, job_id, "--range", "1-2", "--range", "3"))
    assert results["totalSlices"] == 3 and results["results"] == [], results

    cancelled = mesh.cli("job", "cancel", "--url", mesh.seed.url, job_id, "--reason", "changed my mind")
    assert cancelled.returncode == 0 and job_id in cancelled.stdout, cancelled.stderr
    assert document(mesh.cli("job", "status", "--url", mesh.seed.url, job_id))["status"] == "cancelled"


def test_submit_reads_the_function_and_slices_from_files(mesh: Mesh, tmp_path: Path) -> None:
    (tmp_path / "work.js").write_text("function (datum, factor) { return datum * factor }")
    (tmp_path / "slices.json").write_text(json.dumps(list(range(40))))
    files = ("--function", str(tmp_path / "work.js"), "--slices", f"@{tmp_path / 'slices.json'}")
    options = ("--args", "[3]", "--redundancy", "2", "--slice-timeout", "5000")
    job_id = submitted(mesh.cli("job", "submit", "--url", mesh.seed.url, *files, *options))
    assert document(mesh.cli("job", "status", "--url", mesh.seed.url, job_id))["totalSlices"] == 40
    listed = document(mesh.cli("job", "list", "--url", mesh.seed.url))
    assert job_id in [job["jobId"] for job in listed], listed


async def test_the_owner_adds_slices_to_an_open_job_then_closes_it(mesh: Mesh) -> None:
    owner = mesh.seed.identity
    async with Client(mesh.other.url) as client:  # another node than the owner's: its key signs, not the node's
        job_id = await client.deploy_job(owner, DOUBLE, public={"name": "doubling"})
        record = decode_job((await client.job_record(job_id)).data)
        assert (record.job_id.hex(), record.owner_id, record.batches) == (job_id, owner.node_id, ())

        assert await client.add_slices(owner, job_id, [1, {"n": 2}]) == {"added": 2, "totalSlices": 2}
        assert await client.add_slices(owner, job_id, [3]) == {"added": 1, "totalSlices": 3}
        assert decode_job((await client.job_record(job_id)).data).batches[-1] == 1

        closed = await client.close_job(owner, job_id)
        assert closed["jobId"] == job_id, closed
        status = await client.job_status(job_id)
        assert (status["closed"], status["totalSlices"], status["status"]) == (True, 3, "running"), status
        with pytest.raises(BadJob, match="closed"):  # refused on the owner's side: nothing is sent
            await client.add_slices(owner, job_id, [4])

        assert job_id in [job["jobId"] for job in await client.jobs(owner)]
        assert await client.job_count(owner) == len(await client.jobs(owner))
        assert isinstance(await client.accounts(), list)


async def test_a_deploy_bigger_than_a_request_goes_in_parts(mesh: Mesh) -> None:
    owner = Identity.generate()
    data = [{"n": n, "pad": "x" * 40} for n in range(30)]
    async with Client(mesh.other.url) as client:
        job_id = await client.deploy_job(owner, DOUBLE, data, part_bytes=200)  # 3 slices (~62 bytes) a request
        value = await client.job_record(job_id)
        assert decode_job(value.data).total_slices == 30
        assert value.seq == 9  # the deploy, then 9 additions, each the job's next version


def test_only_the_owner_changes_a_job(mesh: Mesh, tmp_path: Path) -> None:
    job_id = submitted(mesh.cli("job", "submit", "--url", mesh.seed.url, "--function", DOUBLE, "--slices", "[1]"))
    stranger = tmp_path / "stranger.json"
    new_identity(stranger)
    for action in ("close", "cancel"):
        assert_one_line_error(mesh.cli("job", action, "--url", mesh.seed.url, job_id, "-i", str(stranger)), "403")
    assert document(mesh.cli("job", "status", "--url", mesh.seed.url, job_id))["status"] == "running"
    # The node's own identity is the default owner only at that node: elsewhere it is said, not used.
    assert_one_line_error(mesh.cli("job", "close", "--url", mesh.other.url, job_id), "-i FILE")
    assert_one_line_error(mesh.cli("job", "status", "--url", mesh.seed.url, "ab" * 20), "404")


def test_a_mistake_in_the_job_is_said_in_one_line(mesh: Mesh, tmp_path: Path) -> None:
    submit = ("job", "submit", "--url", mesh.seed.url, "--function", DOUBLE)
    assert_one_line_error(mesh.cli(*submit, "--slices", "[1, 2"), "--slices is not JSON")
    assert_one_line_error(mesh.cli(*submit, "--slices", '{"a": 1}'), "JSON arrays")
    assert_one_line_error(mesh.cli(*submit, "--slices", f"@{tmp_path / 'missing.json'}"), "cannot read")
    assert_one_line_error(mesh.cli(*submit, "--slices", "[1]", "--redundancy", "10"), "redundancy")
    assert_one_line_error(mesh.cli("job", "results", "--url", mesh.seed.url, "ab" * 20, "--range", "5-2"), "--range")
    broken = mesh.cli("job", "submit", "--url", mesh.seed.url, "--function", "x => {", "--slices", "[1]")
    assert_one_line_error(broken, "400")


def test_list_shows_the_signer_its_own_jobs_only(mesh: Mesh, tmp_path: Path) -> None:
    path = tmp_path / "owner.json"
    new_identity(path)
    owner = ("-i", str(path))
    assert document(mesh.cli("job", "list", "--url", mesh.other.url, *owner)) == []
    submit = ("job", "submit", "--url", mesh.other.url, *owner)
    job_id = submitted(mesh.cli(*submit, "--function", DOUBLE, "--slices", "[]"))
    assert [job["jobId"] for job in document(mesh.cli("job", "list", "--url", mesh.seed.url, *owner))] == [job_id]


async def basic_deploy(url: str, credential: str, body: dict) -> str:
    """A job deployed as dcp-rest's clients deploy one: the identity file and its password, which the
    node unlocks to sign the job's records itself."""
    headers = {"Authorization": f"Basic {base64.b64encode(credential.encode()).decode()}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + paths.JOB_NEW, json=body, headers=headers) as response,
    ):
        assert response.status == 201, await response.text()
        return (await response.json())["jobId"]


def test_an_identity_owns_the_same_jobs_by_either_credential(mesh: Mesh, tmp_path: Path) -> None:
    path = tmp_path / "owner.json"
    new_identity(path, DHTMESH_PASSWORD="hunter2")
    body = {"work": {"function": DOUBLE}, "slices": [1, 2]}
    job_id = asyncio.run(basic_deploy(mesh.seed.url, f"{path.read_text()}:hunter2", body))
    owner = ("-i", str(path))
    listed = mesh.cli("job", "list", "--url", mesh.other.url, *owner, DHTMESH_PASSWORD="hunter2")
    assert [job["jobId"] for job in document(listed)] == [job_id]
    closed = mesh.cli("job", "close", "--url", mesh.seed.url, job_id, *owner, DHTMESH_PASSWORD="hunter2")
    assert document(closed)["closed"] is True


def on_a_terminal(*args: str) -> tuple[str, str]:
    """`dhtmesh ARGS` run with its stderr on a terminal (a pseudo-terminal's): what it printed on
    stdout, and on the terminal."""
    terminal, stderr = pty.openpty()
    try:
        ran = subprocess.run([*DHTMESH, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120)
    finally:
        os.close(stderr)
    shown = b""
    try:
        while piece := os.read(terminal, 4096):
            shown += piece
    except OSError:  # EIO: the terminal's other side is closed and all it held was read
        pass
    finally:
        os.close(terminal)
    assert ran.returncode == 0, shown
    return ran.stdout, shown.decode()


async def read_back(url: str, job_id: str) -> tuple[dict, list[dict]]:
    """One slice's result, and the listen stream of a finished job (which ends)."""
    async with Client(url) as client:
        return await client.job_result(job_id, 20), [line async for line in client.listen_results(job_id)]


def test_submit_waits_for_a_worker_to_compute_the_job(working_mesh: Mesh) -> None:
    mesh = working_mesh
    job = ("--function", DOUBLE, "--slices", json.dumps(list(range(20))))
    waited = mesh.cli("job", "submit", "--url", mesh.seed.url, *job, "--wait", timeout=120)
    job_id = submitted(waited)
    status = json.loads(waited.stdout.splitlines()[1])
    assert (status["status"], status["completedSlices"], status["totalSlices"]) == ("completed", 20, 20), status
    assert waited.stderr == ""  # no bar: stderr is no terminal

    results = document(mesh.cli("job", "results", "--url", mesh.other.url, job_id))
    assert [(r["sliceNumber"], r["value"]) for r in results["results"]] == [(n, 2 * (n - 1)) for n in range(1, 21)]
    some = document(mesh.cli("job", "results", "--url", mesh.seed.url, job_id, "--range", "3-4"))
    assert [r["value"] for r in some["results"]] == [4, 6]
    one, listened = asyncio.run(read_back(mesh.seed.url, job_id))
    assert one["results"] == [{"sliceNumber": 20, "value": 38}]
    assert sorted(line["sliceNumber"] for line in listened) == list(range(1, 21))

    # On a terminal, the completed slices are a bar, ended with a newline before the status is printed.
    own = ("--persist", str(mesh.seed.data_dir))
    printed, shown = on_a_terminal("job", "submit", "--url", mesh.seed.url, *own, *job, "--wait")
    assert json.loads(printed.splitlines()[1])["status"] == "completed"
    assert shown.startswith("\r[") and shown.endswith(f"\r[{'#' * 30}] 20/20\r\n"), repr(shown)
