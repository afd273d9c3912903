"""Real `dhtmesh run` OS processes on 127.0.0.1, driven through the real CLI and the real HTTP proxy."""

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dhtmesh.testing import DHTMESH, NodeProcess, eventually, run_cli

from support import assert_one_line_error, data_of, new_identity, post_json, values_of

pytestmark = pytest.mark.process

Spawn = Callable[..., NodeProcess]


def info(node: NodeProcess) -> dict:
    result = run_cli("info", "--url", node.url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_value_put_on_one_node_is_read_on_another_and_pushed_to_a_listener_on_a_third(spawn: Spawn) -> None:
    first = spawn("a")
    second = spawn("b", "-b", first.udp)
    third = spawn("c", "-b", first.udp)
    asyncio.run(eventually(lambda: info(third)["ipv4"]["good"] >= 2, within=15, every=0.2))
    listener = subprocess.Popen(
        [*DHTMESH, "listen", "--json", "--url", third.url, "greeting", "--count", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the listener subscribes to the replicas before the put
        put = run_cli("put", "--json", "--url", first.url, "greeting", "hello mesh")
        assert put.returncode == 0, put.stderr
        assert values_of(put.stdout)[0]["replicas"] >= 2

        got = run_cli("get", "--json", "--url", second.url, "greeting")
        assert got.returncode == 0, got.stderr
        assert data_of(got.stdout) == [b"hello mesh"]

        pushed, _ = listener.communicate(timeout=15)
        assert data_of(pushed) == [b"hello mesh"]
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def test_signed_value_edited_by_another_owner_is_rejected_everywhere(spawn: Spawn, tmp_path: Path) -> None:
    nodes = [spawn("a")]
    nodes += [spawn(name, "-b", nodes[0].udp) for name in ("b", "c")]
    asyncio.run(eventually(lambda: all(info(node)["ipv4"]["good"] >= 2 for node in nodes), within=15, every=0.2))
    alice, mallory = tmp_path / "alice.json", tmp_path / "mallory.json"
    new_identity(alice)
    new_identity(mallory)

    signed = ["-i", str(alice), "--id", "42", "--seq", "1"]
    first = run_cli("put", "--json", "--url", nodes[0].url, *signed, "doc", "v1 by alice")
    assert first.returncode == 0, first.stderr
    assert values_of(first.stdout)[0]["replicas"] == 2

    # Mallory reuses Alice's id under her own key: the id is taken, every replica refuses.
    taken = run_cli("put", "--url", nodes[1].url, "-i", str(mallory), "--id", "42", "--seq", "9", "doc", "evil")
    assert taken.returncode != 0
    assert "another owner" in taken.stderr

    # Mallory edits Alice's value, keeping Alice as owner: the signature no longer verifies.
    forged = values_of(first.stdout)[0]
    forged.pop("replicas")
    forged |= {"data": base64.b64encode(b"evil").decode(), "seq": 2}
    status, body = post_json(f"{nodes[2].url}/key/doc", forged)
    assert status == 400 and "signature" in body["err"]

    for node in nodes:
        got = run_cli("get", "--json", "--url", node.url, "doc")
        assert got.returncode == 0, got.stderr
        assert data_of(got.stdout) == [b"v1 by alice"]


def test_get_and_listen_decrypt_the_values_encrypted_to_the_given_identity(spawn: Spawn, tmp_path: Path) -> None:
    first = spawn("a")
    second = spawn("b", "-b", first.udp)
    asyncio.run(eventually(lambda: info(second)["ipv4"]["good"] >= 1, within=15, every=0.2))
    bob, eve = tmp_path / "bob.json", tmp_path / "eve.json"
    new_identity(bob)
    new_identity(eve)
    shown = run_cli("identity", "show", "-i", str(bob))
    bob_key = dict(line.split(" ", 1) for line in shown.stdout.splitlines())["public_key"]
    sealed = {"data": base64.b64encode(b"for bob only").decode(), "to": bob_key}
    status, _ = post_json(f"{first.url}/key/letter/encrypt", sealed)
    assert status == 200
    post_json(f"{first.url}/key/letter", {"data": base64.b64encode(b"for all").decode()})

    for command in (["get", "--json"], ["listen", "--json", "--count", "2"]):
        as_bob = run_cli(*command, "--url", second.url, "-i", str(bob), "letter")
        assert as_bob.returncode == 0, as_bob.stderr
        assert data_of(as_bob.stdout) == [b"for all", b"for bob only"]
        assert [v.get("decrypted") for v in values_of(as_bob.stdout) if "to" in v] == [True]
        # Eve holds the wrong key: the sealed value stays sealed.
        as_eve = run_cli(*command, "--url", second.url, "-i", str(eve), "letter")
        assert as_eve.returncode == 0, as_eve.stderr
        sealed_lines = [v for v in values_of(as_eve.stdout) if "to" in v]
        assert len(sealed_lines) == 1 and "cypher" in sealed_lines[0] and "data" not in sealed_lines[0]

    missing = run_cli("get", "--url", second.url, "-i", str(tmp_path / "nobody.json"), "letter")
    assert missing.returncode != 0 and missing.stderr.startswith("dhtmesh: error:")
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00{not an identity")
    broken = run_cli("listen", "--url", second.url, "-i", str(garbage), "letter")
    assert broken.returncode != 0 and broken.stderr.startswith("dhtmesh: error:")
    assert "Traceback" not in broken.stderr


def test_node_killed_with_sigkill_restarts_with_its_values_and_rejoins_from_saved_peers(spawn: Spawn) -> None:
    first = spawn("a")
    second = spawn("b", "-b", first.udp)
    asyncio.run(eventually(lambda: info(second)["ipv4"]["good"] >= 1, within=15, every=0.2))
    put = run_cli("put", "--json", "--url", first.url, "durable", "survives kill -9")
    assert put.returncode == 0 and values_of(put.stdout)[0]["replicas"] == 1
    asyncio.run(eventually(lambda: (second.data_dir / "peers.json").exists(), within=15, every=0.2))

    os.kill(second.pid, signal.SIGKILL)
    second.process.wait(timeout=10)
    # Its bootstrap is now a dead address: it must find its way back through its saved peers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    revived = spawn("b", "-b", dead)
    asyncio.run(eventually(lambda: info(revived)["ipv4"]["good"] >= 1, within=15, every=0.2))
    assert info(revived)["storage_values"] >= 1

    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=15) == 0
    got = run_cli("get", "--json", "--url", revived.url, "durable")
    assert data_of(got.stdout) == [b"survives kill -9"]


def test_sigterm_stops_a_node_cleanly(spawn: Spawn) -> None:
    node = spawn("a")
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=15) == 0
    assert node.process.stderr is not None
    errors = node.process.stderr.read()
    assert "stopped" in errors and "Traceback" not in errors


def test_isolated_node_retries_and_joins_when_its_bootstrap_appears(spawn: Spawn) -> None:
    # An address no other test binds (support hands out 127.x.y.1), so its free port stays free.
    late_host = "127.0.250.250"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((late_host, 0))
        later_port = probe.getsockname()[1]
    lonely = spawn("lonely", "-b", f"{late_host}:{later_port}")
    assert info(lonely)["ipv4"]["good"] == 0
    time.sleep(3.5)  # the first attempt (a call and its retry) times out, then the node backs off
    spawn("late", "-p", str(later_port), "--bind", late_host)  # where the lonely node looks for it
    asyncio.run(eventually(lambda: info(lonely)["ipv4"]["good"] >= 1, within=20, every=0.2))
    lonely.process.send_signal(signal.SIGTERM)
    lonely.process.wait(timeout=15)
    assert lonely.process.stderr is not None
    assert "isolated" in lonely.process.stderr.read()


def test_port_in_use_gives_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        result = run_cli("run", "-p", port, "--bind", "127.0.0.1", "--proxyserver", "0", "--persist", str(tmp_path))
    assert_one_line_error(result, "already in use", port)


def test_proxy_port_in_use_gives_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("run", "-p", "0", "--bind", "127.0.0.1", "--proxyserver", port, "--persist", str(tmp_path))
    assert_one_line_error(result, "proxy port", "already in use")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["-b", "no-such-host.invalid:4222"], "cannot resolve"),
        (["-b", "127.0.0.1:notaport"], "bad port"),
        (["-b", "127.0.0.1:70000"], "out of range"),
        (["-i", "/nonexistent/identity.json"], "does not exist"),
        (["-p", "70000"], "--port"),
        (["--farmer", "--payout", "1NotAnAddress"], "--payout"),
        (["--farmer", "--height", "-1"], "--height"),
        (["--height", "5"], "need --farmer"),
        (["--farmer", "--ping-interval", "0"], "--ping-interval"),
        (["--farmer", "--chunk-quota", "0"], "--chunk-quota"),
        (["--farmer", "--audit-period", "0.5"], "--audit-period"),
        (["--farmer", "--audit-period", "nan"], "--audit-period"),
        (["--farmer", "--pending-timeout", "0.01"], "--pending-timeout"),
        (["--blob-limit", "0"], "--blob-limit"),
        (["--blob-limit", "99999999"], "--blob-limit"),
        (["--allow-origin", "null"], "--allow-origin"),
        (["--allow-origin", "localhost:3000"], "--allow-origin"),
        (["--allow-origin", "http://example.com/path"], "--allow-origin"),
        (["--sandboxes", "2"], "need --worker"),
        (["--worker", "--sandboxes", "0"], "--sandboxes is 1 to 64"),
        (["--worker", "--sandboxes", "65"], "--sandboxes is 1 to 64"),
        (["--worker", "--slice-memory", "8"], "--slice-memory 16 to 16384"),
        (["--worker", "--slice-time", "0"], "--slice-time 1 to 3600000"),
    ],
)
def test_bad_run_flags_give_one_clear_line(tmp_path: Path, flags: list[str], expected: str) -> None:
    result = run_cli("run", "-p", "0", "--proxyserver", "0", "--persist", str(tmp_path), *flags)
    assert_one_line_error(result, expected)


def test_unreadable_identity_gives_one_clear_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\xffnot json")
    result = run_cli("run", "-p", "0", "--proxyserver", "0", "--persist", str(tmp_path), "-i", str(garbage))
    assert_one_line_error(result, "unreadable")


def test_corrupt_value_store_gives_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "values.sqlite3").write_bytes(b"this is not a database" * 100)
    result = run_cli("run", "-p", "0", "--proxyserver", "0", "--persist", str(tmp_path))
    assert_one_line_error(result, "value store")


def test_identity_new_and_show(tmp_path: Path) -> None:
    path = tmp_path / "me.json"
    node_id = new_identity(path)
    assert path.stat().st_mode & 0o777 == 0o600
    shown = run_cli("identity", "show", "-i", str(path))
    assert shown.returncode == 0 and shown.stdout.split()[1] == node_id
    again = run_cli("identity", "new", "-i", str(path))
    assert_one_line_error(again, "already exists")


def test_password_protected_identity(tmp_path: Path) -> None:
    path = tmp_path / "locked.json"
    node_id = new_identity(path, DHTMESH_PASSWORD="correct horse")
    assert "sealed_seed" in json.loads(path.read_text())
    assert (
        run_cli("identity", "show", "-i", str(path), env={"DHTMESH_PASSWORD": "correct horse"}).stdout.split()[1]
        == node_id
    )
    wrong = run_cli("identity", "show", "-i", str(path), env={"DHTMESH_PASSWORD": "wrong"})
    assert_one_line_error(wrong, "wrong password")


def test_client_commands_report_an_unreachable_proxy() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = run_cli("get", "--url", f"http://127.0.0.1:{port}", "k")
    assert_one_line_error(result, "cannot reach")
