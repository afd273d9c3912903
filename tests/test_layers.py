"""Layers only point down: a module imports from its own part or from the layers under it, never from
one above (README, "Architecture"). Read from the sources themselves, so a new upward import fails here.

    cli  →  proxy, bootstrap  →  services (node/records, audits, blobs, transfer, services.py)
         →  the DHT core (the rest of node/)  →  crypto
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"records", "audits", "blobs", "transfer", "services"}
LEVELS = {"crypto": 0, "core": 1, "services": 2, "proxy": 3, "bootstrap": 3, "cli": 4, "testing": 5}

pytestmark = pytest.mark.unit


def layer_of(parts: tuple[str, ...]) -> str | None:
    """The layer of a module named by its parts under the package (`("node", "dht")` is the core)."""
    if not parts or parts[0] not in {*LEVELS, "node"}:
        return None
    if parts[0] != "node":
        return parts[0]
    return "services" if len(parts) > 1 and parts[1] in SERVICES else "core"


def imports_of(path: Path) -> list[tuple[str, ...]]:
    """The package's modules `path` imports, as parts under `dhtmesh`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found += [tuple(name.split(".")[1:]) for name in names if name.startswith("dhtmesh.")]
    return found


def upward_imports() -> list[str]:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        here = layer_of(parts)
        if here is None or parts[0] in {"tests", "scripts", "build"}:
            continue
        for target in imports_of(path):
            there = layer_of(target)
            if there is None or there == here:
                continue
            if LEVELS[there] >= LEVELS[here]:  # above, or beside (proxy and bootstrap know nothing of each other)
                wrong.append(f"{'/'.join(parts)}.py ({here}) imports dhtmesh.{'.'.join(target)} ({there})")
    return wrong


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    assert upward_imports() == []


def test_the_rule_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: the core importing a service, or crypto importing the node, is caught."""
    module = tmp_path / "probe.py"
    module.write_text("from dhtmesh.node.records import rules\nimport dhtmesh.proxy.app\n")
    targets = [layer_of(target) for target in imports_of(module)]
    assert targets == ["services", "proxy"]
    assert all(LEVELS[target] > LEVELS["core"] for target in targets if target)
