"""A node whose disk fills up: a real `dhtmesh run` with its data directory on a small tmpfs. Puts are
refused with JSON 507 (not plain-text 500s with a traceback each), the failure is logged once, reads
keep working, and every put it acknowledged is there after a SIGKILL and a restart."""

import base64
import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from dhtmesh.testing import ProcessGroup

from support import get_json

pytestmark = pytest.mark.process


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of this test's own (root may mount one; others skip)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no room left; returns it (delete it to free the room)."""
    filler = disk / "filler"
    with filler.open("wb") as sink:
        try:
            while True:
                sink.write(os.urandom(64 * 1024))
                sink.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


async def put(session: aiohttp.ClientSession, url: str, name: str) -> tuple[int, dict]:
    body = {"data": base64.b64encode(name.encode()).decode(), "id": str(1000 + int(name.split("-")[1]))}
    async with session.post(f"{url}/key/{name}", json=body) as response:
        return response.status, await response.json(content_type=None)


async def test_a_full_disk_refuses_puts_with_json_keeps_reads_and_loses_nothing(small_disk: Path) -> None:
    group = ProcessGroup(small_disk)
    node = group.launch("full")
    acknowledged: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            for index in range(10):
                status, _ = await put(session, node.url, f"before-{index}")
                assert status == 200
                acknowledged.append(f"before-{index}")
            filler = fill(small_disk)
            answers = [await put(session, node.url, f"during-{index}") for index in range(40)]
            acknowledged += [f"during-{index}" for index, (status, _) in enumerate(answers) if status == 200]
            refused = [body for status, body in answers if status != 200]
            assert refused, "a full disk must refuse puts"
            assert all(status in (200, 507) for status, _ in answers)
            assert all(set(body) == {"err"} and "disk" in body["err"] for body in refused)
            for name in acknowledged:  # reads keep working
                async with session.get(f"{node.url}/key/{name}") as response:
                    assert response.status == 200
                    lines = (await response.text()).splitlines()
                    assert any(base64.b64encode(name.encode()).decode() in line for line in lines), name
            status, info = await get_json(node.url, "/node/info")
            assert status == 200 and info["counters"]["storage_errors"] == len(refused)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        assert node.process.stderr is not None
        log = node.process.stderr.read()
        assert "Traceback" not in log
        assert log.count("cannot write") == 1, log  # said once, not per request
        filler.unlink()
        revived = group.launch("full")
        async with aiohttp.ClientSession() as session:
            for name in acknowledged:
                async with session.get(f"{revived.url}/key/{name}") as response:
                    assert base64.b64encode(name.encode()).decode() in await response.text(), name
            assert (await put(session, revived.url, "after-0"))[0] == 200  # and it writes again
    finally:
        group.stop()
