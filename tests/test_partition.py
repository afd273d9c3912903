"""A mesh of `dhtmesh run` processes, each in its own network namespace (scripts/mesh --netns), is cut in
two and healed. The cut is a blackhole route in every namespace towards the other side's addresses, so
the test host still reaches every proxy."""

import asyncio
import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

from dhtmesh.testing import eventually

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_mesh_script() -> ModuleType:
    loader = SourceFileLoader("mesh_script", str(SCRIPTS / "mesh"))
    spec = importlib.util.spec_from_loader("mesh_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["ip", "netns", "add", "dmprobe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "dmprobe"], capture_output=True)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not can_make_namespaces(), reason="needs root and iproute2 network namespaces"),
]


@pytest.fixture
def netns_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    mesh_script = load_mesh_script()
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    mesh = mesh_script.Mesh(netns=True)
    try:
        mesh.start(6, tmp_path)
        yield mesh
    finally:
        mesh.stop()


def http(method: str, url: str, body: dict | None = None) -> str:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as response:
        return response.read().decode()


def put(url: str, text: bytes) -> dict:
    return json.loads(http("POST", f"{url}/key/split", {"data": base64.b64encode(text).decode()}))


def texts(url: str) -> set[bytes]:
    lines = http("GET", f"{url}/key/split").splitlines()
    return {base64.b64decode(json.loads(line)["data"]) for line in lines if line}


def set_cut(mesh: object, sides: tuple[list[int], list[int]], cut: bool) -> None:
    addresses = [node.udp.split(":")[0] for node in mesh.nodes]
    for side, other in (sides, sides[::-1]):
        for index in side:
            namespace = f"{mesh.tag}-{index}"
            for peer in other:
                action = "add" if cut else "del"
                subprocess.run(
                    ["ip", "-n", namespace, "route", action, "blackhole", f"{addresses[peer]}/32"],
                    check=True,
                    capture_output=True,
                )


def test_both_sides_of_a_partition_keep_working_and_see_each_other_after_it_heals(netns_mesh: object) -> None:
    mesh = netns_mesh
    urls = [node.url for node in mesh.nodes]
    left, right = [0, 1, 2], [3, 4, 5]
    connected = lambda: all(json.loads(http("GET", url))["ipv4"]["good"] >= 5 for url in urls)  # noqa: E731
    asyncio.run(eventually(connected, within=20, every=0.5))

    set_cut(mesh, (left, right), cut=True)
    listeners = []
    try:
        asyncio.run(eventually(lambda: put(urls[0], b"written left")["replicas"] >= 1, within=30, every=0.5))
        asyncio.run(eventually(lambda: put(urls[3], b"written right")["replicas"] >= 1, within=30, every=0.5))
        asyncio.run(eventually(lambda: b"written left" in texts(urls[2]), within=15, every=0.5))
        asyncio.run(eventually(lambda: b"written right" in texts(urls[5]), within=15, every=0.5))
        assert b"written right" not in texts(urls[1]), "the cut is real"
        # A listener on each side, opened during the cut, must hear of the other side's value once healed.
        listeners = [urllib.request.urlopen(f"{urls[i]}/key/split/listen", timeout=90) for i in (1, 4)]
    finally:
        set_cut(mesh, (left, right), cut=False)
    try:
        both = {b"written left", b"written right"}
        asyncio.run(eventually(lambda: all(both <= texts(url) for url in urls), within=60, every=0.5))
        for listener in listeners:
            seen = set()
            while seen != {b"written left", b"written right"}:
                seen.add(base64.b64decode(json.loads(listener.readline())["data"]))
    finally:
        for listener in listeners:
            listener.close()
