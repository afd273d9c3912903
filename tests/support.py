"""Helpers shared by the tests: fast node settings, in-process nodes, and `dhtmesh` processes.

Every node a test starts gets a loopback address of its own, in a /24 of its own (`loopback_host`):
nodes limit what one host or subnet may hold of their routing table and of a key's replicas, so a
mesh of many nodes on 127.0.0.1 would look like one machine faking many, which is the attack those
limits stop. 127.0.0.0/8 is all loopback on Linux; 127.0.0.x is left to the attackers tests play
(`ATTACKER`). Each pytest-xdist worker draws from a range of its own.
"""

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from dhtmesh.cli.paths import IDENTITY_FILE
from dhtmesh.crypto import Identity
from dhtmesh.crypto.identity import load_identity
from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.node.transfer.chunk_client import Challenge, ChunkClient, HolderRefused
from dhtmesh.node.transfer.chunk_service import NOT_AUDITOR
from dhtmesh.node.wire import codec, netgroup
from dhtmesh.node.wire.ratelimit import Address

# Short periods so that background duties (sweep, repair, hand-off) happen within a test.
FAST = NodeConfig(rpc_timeout=0.3, sweep_interval=0.2, handoff_delay=0.05, subscription_ttl=6.0)

ATTACKER = "127.0.0.1"  # where the tests' hostile peers sit; honest nodes each have an address of their own
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_hosts = itertools.count(1 + 16384 * _WORKER)


def loopback_host() -> str:
    """A loopback address no other node of this test run has (in this worker's range), in a /24 of its
    own."""
    return netgroup.loopback_host(next(_hosts))


async def start_node(
    config: NodeConfig = FAST, data_dir: Path | None = None, host: str | None = None, identity: Identity | None = None
) -> DhtNode:
    node = DhtNode(identity or Identity.generate(), config, data_dir, rules=RECORD_RULES)
    await node.start(host or loopback_host(), 0)
    return node


DHTMESH = [str(Path(sys.executable).with_name("dhtmesh"))]
# `python -c ... SOFT HARD COMMAND...`: set the limit on open files, then become COMMAND (same PID).
_WITH_OPEN_FILES = [
    sys.executable,
    "-c",
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])));"
    " os.execv(sys.argv[3], sys.argv[3:])",
]
READY_TIMEOUT = 20.0


@dataclass
class NodeProcess:
    process: subprocess.Popen
    node_id: str
    udp: str
    url: str
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> Address:
        """The node's UDP address (and, for a farmer, its chunk streams' TCP address)."""
        host, port = self.udp.rsplit(":", 1)
        return host.strip("[]"), int(port)  # an IPv6 host is printed in brackets: [::1]:4222

    @property
    def identity(self) -> Identity:
        """The node's identity, read from its data dir (for a farmer: a registered auditor's key)."""
        return load_identity(self.data_dir / IDENTITY_FILE, None)


class ProcessGroup:
    """`dhtmesh run` processes on loopback addresses of their own with free ports, each with its own data
    dir under `root` (reused, with its address, when a name is launched again). `stop()` kills every
    one of them by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: list[subprocess.Popen] = []
        self._hosts: dict[str, str] = {}

    def launch(self, name: str, *extra: str, open_files: tuple[int, int] | None = None) -> NodeProcess:
        """`open_files`: the process's (soft, hard) limit on open files, as a machine might set them."""
        data_dir = self.root / name
        host = self._hosts.setdefault(name, loopback_host())
        args = ["run", "-p", "0", "--bind", host, "--proxyserver", "0", "--persist", str(data_dir), *extra]
        command = [*_WITH_OPEN_FILES, *map(str, open_files), *DHTMESH] if open_files else DHTMESH
        process = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self._started.append(process)
        ready = wait_ready(process)
        return NodeProcess(process, ready["node_id"], ready["udp"], ready["proxy"], data_dir)

    def stop(self) -> None:
        for process in self._started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()


ANSWER_TIMEOUT = aiohttp.ClientTimeout(total=10)


def from_address(host: str) -> aiohttp.ClientSession:
    """A client session whose connections come from `host` (another loopback address: another client)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(host, 0)))


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: object = None, origin: str | None = None
) -> tuple[int, dict]:
    """One request; the body (a dict as JSON text, as curl -d sends it) and the JSON answer."""
    headers = {"Origin": origin} if origin else {}
    data = json.dumps(body) if body is not None else None
    # A bounded wait: a stream that should have been refused fails the test instead of hanging it.
    async with session.request(method, url, data=data, headers=headers, timeout=ANSWER_TIMEOUT) as response:
        text = await response.text()
        return response.status, json.loads(text) if text and response.content_type == "application/json" else {}


async def get_json(url: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return response.status, await response.json(content_type=None)


async def audit_once_registered(
    client: ChunkClient, address: Address, holder_id: bytes, challenge: Challenge, within: float = 20.0
) -> None:
    """Audit the holder, again while it does not know the auditor as a registered farmer yet (its view
    of the registry learns of a registration within seconds)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await client.audit(address, holder_id, challenge)
        except HolderRefused as refusal:
            if refusal.reason != NOT_AUDITOR or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.3)


class OpenDhtClient:
    """Debian's `dhtnode --proxyclient URL` (OpenDHT 2.4.12's own proxy client), driven command by
    command through its prompt; `identity=True` gives it an RSA identity of its own (`-i`)."""

    def __init__(self, url: str, identity: bool = False) -> None:
        if shutil.which("dhtnode") is None:
            import pytest  # only tests construct this

            if os.environ.get("CI"):
                pytest.fail("dhtnode is not installed: scripts/test installs it with apt-get")
            pytest.skip("dhtnode (Debian package) is not installed")
        command = ["dhtnode", *(["-i"] if identity else []), "--proxyclient", url]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._seen = 0  # lines before this one were matched by an earlier `expect`
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.key_id = self.expect(r"Public key ID ([0-9a-f]{40})").group(1) if identity else ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._arrived:
                self.lines.append(line.rstrip("\n"))
                self._arrived.notify_all()

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def expect(self, pattern: str, within: float = 20.0) -> re.Match:
        """The first line not matched before that matches `pattern`; fails with the output after `within`."""
        deadline = time.monotonic() + within
        with self._arrived:
            while True:
                for index in range(self._seen, len(self.lines)):
                    if found := re.search(pattern, self.lines[index]):
                        self._seen = index + 1
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"dhtnode never printed {pattern!r}:\n" + "\n".join(self.lines))
                self._arrived.wait(left)

    def wait_connected(self, within: float = 20.0) -> None:
        """Until the client reads the proxy's node info as connected (`good` contacts), as `ll` shows."""
        deadline = time.monotonic() + within
        while True:
            self.send("ll")
            try:
                self.expect(r"Known nodes: [1-9]\d* good", within=1.0)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream:
                stream.close()


def run_cli(*args: str, timeout: float = 30.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a short `dhtmesh` command to completion."""
    return subprocess.run(
        [*DHTMESH, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def post_json(url: str, document: dict) -> tuple[int, dict]:
    """POST a JSON document (blocking, for tests that drive processes); the status and the JSON reply."""
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def new_identity(path: Path, **env: str) -> str:
    """`dhtmesh identity new -i path` (password-protected when `DHTMESH_PASSWORD` is given); its node id."""
    result = run_cli("identity", "new", "-i", str(path), *(["--password"] if env else []), env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def values_of(output: str) -> list[dict]:
    """The JSON lines a client command printed with `--json`."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def data_of(output: str) -> list[bytes]:
    """The data of the values a client command printed with `--json`, sorted."""
    return sorted(base64.b64decode(v["data"]) for v in values_of(output))


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    """The command failed with the CLI's contract: one `dhtmesh: error: ...` line, no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dhtmesh: error:")
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in lines[0]


def wait_ready(process: subprocess.Popen) -> dict[str, str]:
    """Read the `ready node_id=... udp=... proxy=...` line a node prints once it serves."""
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.2)
        if readable:
            line = process.stdout.readline()
            if line.startswith("ready "):
                return dict(field.split("=", 1) for field in line.split()[1:])
            if not line and process.poll() is not None:
                break
    process.kill()
    raise AssertionError(f"node did not become ready: {process.stderr.read() if process.stderr else ''}")


@contextlib.contextmanager
def watch_datagrams(nodes: Iterable[DhtNode]) -> Iterator[list[tuple[Address, bytes]]]:
    """Record `(destination, datagram)` for everything the nodes send while the block runs."""
    sent: list[tuple[Address, bytes]] = []
    transports = []
    for node in nodes:
        transport = node.endpoint.transport
        assert transport is not None
        original = transport.sendto

        def sendto(data: bytes, addr: Any = None, *, _original: Callable = original) -> None:
            sent.append((addr, bytes(data)))
            _original(data, addr)

        transport.sendto = sendto  # type: ignore[method-assign]
        transports.append(transport)
    try:
        yield sent
    finally:
        for transport in transports:
            del transport.sendto  # the class's own method again


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if not self.reply.done() and data[:1] == bytes((codec.RESPONSE,)):
            self.reply.set_result(codec.decode(data).body)


async def udp_request(to: Address, name: str, args: list, *, source: str = "127.0.0.1", patience: float = 2.0) -> Any:
    """One hand-made rpcudp request from a bare socket on `source` (a stock peer, or anyone who never
    proved an identity); returns the reply's body, or raises `TimeoutError`."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_OneReply, local_addr=(source, 0))
    try:
        transport.sendto(codec.encode(codec.REQUEST, os.urandom(codec.MESSAGE_ID_SIZE), [name, args]), to)
        async with asyncio.timeout(patience):
            return await protocol.reply
    finally:
        transport.close()


async def eventually(condition: Callable[[], Any], within: float = 10.0, every: float = 0.05) -> None:
    """Wait until `condition()` (or the awaitable it returns) is true, asking again `every` s; fail the
    test after `within` s. A sync test waits with `asyncio.run(eventually(...))`."""
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)
