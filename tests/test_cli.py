"""The `dhtmesh` command as a new user meets it (issue 14, items 10-18): the real console script against
real `dhtmesh run` processes on loopback, through their real HTTP proxies.

One mesh of two nodes serves the module. Every command runs with `$XDG_DATA_HOME` set to the mesh's
root, where the first node's data directory is the default one (`<root>/dhtmesh`): so the commands
find "the node's identity" where a user's would be, and nothing touches the real home directory.
"""

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dhtmesh.client import Client, SyncClient
from dhtmesh.node.values import Value
from dhtmesh.testing import DHTMESH, NodeProcess, ProcessGroup, eventually, run_cli

from support import assert_one_line_error, data_of, new_identity, values_of

pytestmark = pytest.mark.process


@dataclass
class Mesh:
    group: ProcessGroup
    seed: NodeProcess  # its data directory is the default one: $XDG_DATA_HOME/dhtmesh
    other: NodeProcess

    @property
    def env(self) -> dict[str, str]:
        return {"XDG_DATA_HOME": str(self.group.root), "DHTMESH_URL": ""}

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return run_cli(*args, env=self.env | env)


async def info(url: str) -> dict:
    async with Client(url) as client:
        return await client.info()


async def joined(url: str) -> bool:
    return (await info(url))["ipv4"]["good"] >= 1


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    group = ProcessGroup(tmp_path_factory.mktemp("cli-mesh"))
    try:
        seed = group.launch("dhtmesh")
        other = group.launch("other", "-b", seed.udp)
        asyncio.run(eventually(lambda: joined(other.url)))
        yield Mesh(group, seed, other)
    finally:
        group.stop()


def sha1(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()


def read_key(url: str, key_hash: str) -> list[bytes]:
    """What curl reads at `/key/<hash>`."""
    with urllib.request.urlopen(f"{url}/key/{key_hash}", timeout=10) as response:
        return data_of(response.read().decode())


# ---- 10: keys ----------------------------------------------------------------------------------------


def test_every_string_is_a_key_of_its_own_hashed_as_curl_and_opendht_hash_it(mesh: Mesh) -> None:
    keys = ["room?1", "room?2", "chat#alice", "chat#bob", "a/b", "a/b/c", "..", ".", "x y", "ключ"]
    for index, key in enumerate(keys):
        put = mesh.cli("put", "--url", mesh.seed.url, key, f"value {index}")
        assert put.returncode == 0, (key, put.stderr)
    for index, key in enumerate(keys):
        got = mesh.cli("get", "--json", "--url", mesh.other.url, key)
        assert got.returncode == 0, (key, got.stderr)
        assert data_of(got.stdout) == [f"value {index}".encode()], key  # not the node's info for ".."
        assert read_key(mesh.seed.url, sha1(key)) == [f"value {index}".encode()], key
    # A 40-hex key is the hash itself, as for OpenDHT: the same values as the string it hashes.
    as_hash = mesh.cli("get", "--json", "--url", mesh.other.url, sha1("room?2"))
    assert data_of(as_hash.stdout) == [b"value 1"]


# ---- 11: values as text ------------------------------------------------------------------------------


def test_values_print_as_text_and_with_json_exactly_as_the_proxy_sent_them(mesh: Mesh, tmp_path: Path) -> None:
    key = "printing"
    assert mesh.cli("put", "--url", mesh.seed.url, key, 'two\nlines, "quoted"').returncode == 0
    with SyncClient(mesh.seed.url) as client:
        client.put(key, Value(0, b"\xff\x00\x01", utype="application/octet-stream"))
    expected = {'data="two\\nlines, \\"quoted\\""', 'utype="application/octet-stream" data_base64=/wAB'}

    got = mesh.cli("get", "--url", mesh.other.url, key)
    assert got.returncode == 0, got.stderr
    assert {line.split(" ", 1)[1] for line in got.stdout.splitlines()} == expected
    assert all(line.startswith("id=") for line in got.stdout.splitlines())
    listened = mesh.cli("listen", "--count", "2", "--url", mesh.other.url, key)
    assert sorted(listened.stdout.splitlines()) == sorted(got.stdout.splitlines())
    exact = mesh.cli("get", "--json", "--url", mesh.other.url, key)
    assert data_of(exact.stdout) == [b'two\nlines, "quoted"', b"\xff\x00\x01"]

    # Encrypted to Bob by the node (`encrypt`): Bob's `get -i` and `listen -i` show the text; others see it sealed.
    bob = tmp_path / "bob.json"
    new_identity(bob)
    bob_key = dict(line.split(" ", 1) for line in mesh.cli("identity", "show", "-i", str(bob)).stdout.splitlines())
    sealed = mesh.cli("encrypt", "--url", mesh.seed.url, "--to", bob_key["public_key"], "letter", "for bob only")
    assert sealed.returncode == 0, sealed.stderr
    assert f"to={bob_key['node_id']} replicas=" in sealed.stdout and sealed.stdout.rstrip().endswith("sealed=true")
    for command in (["get"], ["listen", "--count", "1"]):
        as_bob = mesh.cli(*command, "-i", str(bob), "--url", mesh.other.url, "letter")
        assert as_bob.returncode == 0, as_bob.stderr
        assert f"owner={mesh.seed.node_id}" in as_bob.stdout
        assert as_bob.stdout.rstrip().endswith('decrypted=true data="for bob only"')
    as_anyone = mesh.cli("get", "--url", mesh.other.url, "letter")
    assert as_anyone.stdout.rstrip().endswith("sealed=true") and "data" not in as_anyone.stdout


# ---- 12: the farmer is the node, never a new key -----------------------------------------------------


def test_farmer_commands_act_as_the_node_and_never_make_a_key(mesh: Mesh, tmp_path: Path) -> None:
    nowhere = {"XDG_DATA_HOME": str(tmp_path)}  # no node here: no identity
    for action in (["show"], ["audits"], ["register"], ["ping"]):
        missing = mesh.cli("farmer", *action, "--url", mesh.seed.url, **nowhere)
        assert_one_line_error(missing, "no node identity at", str(tmp_path / "dhtmesh" / "identity.json"))
    assert mesh.cli("farmer", "online", "--url", mesh.seed.url, **nowhere).returncode == 0
    assert list(tmp_path.iterdir()) == []  # nothing was created

    # The identity found must be that of the node at --url: no registering another node's key by mistake.
    stranger = mesh.cli("farmer", "register", "--url", mesh.other.url)  # the default identity is the seed's
    assert_one_line_error(stranger, "not the node at", mesh.other.node_id)

    registered = mesh.cli("farmer", "register", "--url", mesh.seed.url)
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["nodeid"] == mesh.seed.node_id
    shown = mesh.cli("farmer", "show", "--url", mesh.seed.url)
    assert json.loads(shown.stdout)["nodeid"] == mesh.seed.node_id
    other_dir = ["--persist", str(mesh.other.data_dir)]
    also = mesh.cli("farmer", "register", "--url", mesh.other.url, *other_dir)
    assert also.returncode == 0 and json.loads(also.stdout)["nodeid"] == mesh.other.node_id

    # `farmer total` and `farmer audits`: dataserv's /api/total, and the audits the proxy serves.
    def total() -> int:
        return json.loads(mesh.cli("farmer", "total", "--url", mesh.other.url).stdout)["total_farmers"]

    asyncio.run(eventually(lambda: total() == 2))
    audits = mesh.cli("farmer", "audits", "--url", mesh.other.url, "--id", mesh.seed.node_id)
    assert audits.returncode == 0, audits.stderr
    assert json.loads(audits.stdout) | {"reputation": None} == {
        "nodeid": mesh.seed.node_id,
        "audits": [],
        "reputation": None,
    }
    own = mesh.cli("farmer", "audits", "--url", mesh.other.url, *other_dir)
    assert json.loads(own.stdout)["nodeid"] == mesh.other.node_id


# ---- 13: --url and $DHTMESH_URL ----------------------------------------------------------------------


def test_the_proxy_url_is_taken_in_its_usual_forms(mesh: Mesh) -> None:
    bare = mesh.seed.url.removeprefix("http://")
    forms = [
        (["--url", bare], {}),
        (["--url", mesh.seed.url + "/"], {}),
        ([], {"DHTMESH_URL": bare}),
        ([], {"DHTMESH_URL": mesh.seed.url + "/"}),
        (["--url", mesh.seed.url], {"DHTMESH_URL": "ftp://wrong"}),  # --url comes first
    ]
    for url, env in forms:
        info = mesh.cli("info", *url, **env)
        assert info.returncode == 0, (url, env, info.stderr)
        assert json.loads(info.stdout)["node_id"] == mesh.seed.node_id
        farmers = mesh.cli("farmer", "total", *url, **env)  # the farmer command took a traceback
        assert farmers.returncode == 0 and "total_farmers" in farmers.stdout, (url, env, farmers.stderr)
    for url, env, said in [
        (["--url", "ftp://127.0.0.1:8080"], {}, "--url"),
        (["--url", "http://127.0.0.1:99999"], {}, "--url"),
        (["--url", f"{mesh.seed.url}/key/x"], {}, "address only"),
        ([], {"DHTMESH_URL": "http://:8080"}, "$DHTMESH_URL"),
    ]:
        assert_one_line_error(mesh.cli("get", "k", *url, **env), said)
    for command in (["farmer", "ping"], ["blob", "get", "ab" * 32]):
        assert_one_line_error(mesh.cli(*command, "--url", "ftp://127.0.0.1:8080"), "--url")


# ---- 14: one node per data directory -----------------------------------------------------------------


def test_a_second_node_on_a_data_directory_is_refused_and_a_killed_one_leaves_no_lock(mesh: Mesh) -> None:
    second = run_cli("run", "-p", "0", "--proxyserver", "0", "--persist", str(mesh.seed.data_dir))
    assert_one_line_error(second, "in use by another dhtmesh run", f"pid {mesh.seed.pid}")
    killed = mesh.group.launch("killed")
    os.kill(killed.pid, signal.SIGKILL)
    killed.process.wait(timeout=10)
    again = mesh.group.launch("killed")
    assert again.node_id == killed.node_id


# ---- 15: the first node of a mesh is not "isolated" --------------------------------------------------


def test_the_first_node_of_a_new_mesh_says_so_once_at_info_level(mesh: Mesh) -> None:
    quiet, told = mesh.group.launch("first-quiet"), mesh.group.launch("first-told", "-v")
    time.sleep(3.5)  # its joiner has looked for peers three times (at 0, 1 and 3 s)
    quiet_log, told_log = (stopped_log(node) for node in (quiet, told))
    assert "isolated" not in quiet_log and "level=warning" not in quiet_log
    said = [line for line in told_log.splitlines() if "first node of a new mesh" in line]
    assert len(said) == 1 and "level=info" in said[0], told_log
    assert "isolated" not in told_log


def stopped_log(node: NodeProcess) -> str:
    """What the node logged, once stopped by SIGTERM."""
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=15) == 0
    assert node.process.stderr is not None
    return node.process.stderr.read()


# ---- 16: a progress bar never swallows an error ------------------------------------------------------


async def test_a_progress_bar_is_ended_before_an_error_and_on_ctrl_c(mesh: Mesh, tmp_path: Path) -> None:
    node = mesh.group.launch("small-blobs", "--blob-limit", "1")
    big = tmp_path / "big.bin"
    with big.open("wb") as file:
        file.truncate(64 * 1024 * 1024)
    refused = mesh.cli("blob", "put", str(big), "--url", node.url)
    assert refused.returncode == 1
    *bar, error = refused.stderr.splitlines()  # (text mode reads the bar's \r as a line end)
    assert bar[-1].startswith("[") and bar[-1].endswith("MiB/s") and error.startswith("dhtmesh: error: 413")

    os.kill(node.pid, signal.SIGSTOP)  # a node that does not answer: the upload stalls
    try:
        upload = await asyncio.create_subprocess_exec(
            *DHTMESH, "blob", "put", str(big), "--url", node.url, stderr=asyncio.subprocess.PIPE
        )
        try:
            assert upload.stderr is not None
            async with asyncio.timeout(20):
                drawn = await upload.stderr.readuntil(b"MiB/s")
            upload.send_signal(signal.SIGINT)
            rest = await upload.stderr.read()
            assert await upload.wait() == 130
        finally:
            if upload.returncode is None:
                upload.kill()
                await upload.wait()
    finally:
        os.kill(node.pid, signal.SIGCONT)
    assert drawn.startswith(b"\r[") and rest.endswith(b"\n") and b"Traceback" not in rest


# ---- 17: IPv6 ----------------------------------------------------------------------------------------


async def test_an_ipv6_node_prints_an_address_that_b_takes_and_counts_ipv6_contacts(mesh: Mesh) -> None:
    first = mesh.group.launch("v6-first", "--bind", "::1")
    assert first.udp.startswith("[::1]:")
    second = mesh.group.launch("v6-second", "--bind", "::1", "-b", first.udp)  # the ready line, as printed
    for node in (first, second):
        await eventually(lambda node=node: contacts_of(node.url, "ipv6"))
        shown = await info(node.url)
        assert shown["ipv4"] == {"good": 0, "dubious": 0, "incoming": 0}
        assert shown["address"] == node.udp
    assert (await info(mesh.seed.url))["ipv6"]["good"] == 0


async def contacts_of(url: str, family: str) -> int:
    return (await info(url))[family]["good"]


# ---- 18: help, and the commands users look for -------------------------------------------------------


def test_help_says_what_each_command_and_option_does(mesh: Mesh) -> None:
    run_help = mesh.cli("run", "--help").stdout
    assert "Run a node and its proxy. Serves until SIGINT" in run_help
    for said in ("(default: 4222)", "(default: 8080)", "(default: 127.0.0.1)", "repeatable", "-v, --verbose more"):
        assert said in " ".join(run_help.split()), said
    listing = mesh.cli("--help").stdout
    for command in ("run", "put", "sign", "encrypt", "cancel", "get", "listen", "info", "farmer", "blob", "identity"):
        assert f"\n    {command} " in listing, command
    for command in ("sign", "encrypt", "cancel", "farmer"):
        usage, description, *_ = mesh.cli(command, "--help").stdout.split("\n\n")
        assert usage.startswith(f"usage: dhtmesh {command}") and description[0].isupper(), command
    farmer_help = mesh.cli("farmer", "--help").stdout
    assert "\n  total " in farmer_help and "\n  audits " in farmer_help
    for args in (["run"], ["blob", "put", "file"]):
        wrong = mesh.cli(*args, "--foo")
        usage = " ".join(["usage: dhtmesh", *args[:2]]) + " "
        assert wrong.returncode == 2 and wrong.stderr.startswith(usage), wrong.stderr
        assert "unrecognized arguments: --foo" in wrong.stderr


def test_sign_and_cancel(mesh: Mesh) -> None:
    signed = mesh.cli("sign", "--url", mesh.seed.url, "notes", "by the node")
    assert signed.returncode == 0, signed.stderr
    (value,) = values_of(mesh.cli("get", "--json", "--url", mesh.other.url, "notes").stdout)
    assert "sig" in value and f"owner={mesh.seed.node_id}" in mesh.cli("get", "--url", mesh.other.url, "notes").stdout

    permanent = mesh.cli("put", "--json", "--permanent", "--url", mesh.seed.url, "kept key", "kept")
    value_id = values_of(permanent.stdout)[0]["id"]

    def permanent_puts() -> int:
        with SyncClient(mesh.seed.url) as client:
            return client.stats()["totalPermanentPuts"]

    before = permanent_puts()
    cancelled = mesh.cli("cancel", "--url", mesh.seed.url, "kept key", value_id)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"cancelled id={value_id}\n")
    assert permanent_puts() == before - 1
    assert_one_line_error(mesh.cli("cancel", "--url", mesh.seed.url, "kept key", value_id), "404")
