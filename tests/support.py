"""Helpers of particular tests: HTTP requests to a proxy, audits that wait for the registry, whether a
listener's subscriptions are in place, Debian's OpenDHT client, and the CLI's output. What builds and
watches nodes is the kit, `dhtmesh.testing`."""

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from dhtmesh.node.config import NodeConfig
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.services import Services
from dhtmesh.node.transfer.chunk_client import Challenge, ChunkClient, HolderRefused
from dhtmesh.node.transfer.chunk_service import NOT_AUDITOR, ChunkService
from dhtmesh.node.transfer.port import Port
from dhtmesh.node.wire.ratelimit import Address
from dhtmesh.testing import FAST, Mesh, run_cli

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


def subscribed(listening: DhtNode, key: bytes, nodes: list[DhtNode]) -> bool:
    """Whether `listening` chose the replicas to listen to for `key`, and each of them holds its subscription."""
    replicas = [node for node in nodes if listening.subscribed_to(key, node.address, node.node_id)]
    return bool(replicas) and all(
        any(address == listening.address for address, _ in replica.hub.subscribers_of(key)) for replica in replicas
    )


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


class Tokens:
    """A verifier that accepts the tokens it was given (the accounts service's `verify`, for streams)."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens

    async def verify(self, token: str) -> str:
        if token not in self.tokens:
            raise PermissionError("unknown token")
        return self.tokens[token]

    async def close(self) -> None:
        return None


@asynccontextmanager
async def stream_services(
    count: int, tokens: dict[str, str], config: NodeConfig = FAST, root: Path | None = None, persist: bool = False
) -> AsyncIterator[list[Services]]:
    """`count` joined in-process nodes with their services started, whose streams take `tokens`
    (`Tokens`); all stopped after."""
    nodes = Mesh(root)
    started: list[Services] = []
    try:
        for node in await nodes.grow(count, config, persist=persist):
            services = Services(node)
            services.streams.accounts = Tokens(tokens)  # type: ignore[assignment]
            started.append(services)
            await services.start()
        yield started
    finally:
        for services in started:
            await services.stop()
        await nodes.stop()


@asynccontextmanager
async def chunk_port(service: ChunkService, sock: socket.socket | None = None) -> AsyncIterator[tuple[str, int]]:
    """`service` on a node's TCP port (`Port`, as a farmer serves it; no streams), on a free loopback
    port or the bound `sock`: its address; stopped after."""
    port = Port(service.counters, None, service)
    await port.start("127.0.0.1", 0, sock=sock)
    try:
        yield "127.0.0.1", port.port
    finally:
        await port.stop()
