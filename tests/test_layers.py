"""Layers only point down: a module imports from its own part or from the layers under it, never from
one above (README, "Architecture"). Read from the sources themselves, so a new upward import fails here.

    testing (the test kit)  →  cli  →  proxy, client, bootstrap  →  api (the contract proxy and client share)
         →  services (node/records, accounts, audits, blobs, jobs, streams, transfer, services.py)
         →  the DHT core (the rest of node/)  →  crypto
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"records", "accounts", "audits", "blobs", "jobs", "streams", "transfer", "services"}
LEVELS = {
    "crypto": 0, "core": 1, "services": 2, "api": 3, "proxy": 4, "client": 4, "bootstrap": 4, "cli": 5, "testing": 6,
}  # fmt: skip

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
            if LEVELS[there] >= LEVELS[here]:  # above, or beside (proxy, client, bootstrap: none knows another)
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


def test_the_proxy_and_its_client_share_the_contract_not_each_other(tmp_path: Path) -> None:
    """The client importing the proxy (or the other way round) is caught: they meet in `api` only."""
    module = tmp_path / "probe.py"
    module.write_text("from dhtmesh.proxy import routes\nfrom dhtmesh.api import paths\n")
    proxy, api = (layer_of(target) for target in imports_of(module))
    assert LEVELS[proxy] >= LEVELS["client"] and LEVELS[api] < LEVELS["client"] < LEVELS["cli"]


# The core's own parts of a `DhtNode`: services, the proxy, bootstrap, the CLI and the scripts use its
# public methods (`held`, `contact_count`, `known_contact`, `keep_announcing`, ...), never these.
NODE_INTERNALS = {"store", "table", "hub", "endpoint", "admission"}


def node_internals_read(path: Path) -> list[str]:
    """`node.store`-like reads in `path`: an attribute of `NODE_INTERNALS` read from an expression that
    names a node (`node`, `self._node`, `self.nodes[i]`...)."""
    found = []
    for item in ast.walk(ast.parse(path.read_text())):
        if isinstance(item, ast.Attribute) and item.attr in NODE_INTERNALS:
            owner = ast.unparse(item.value)
            if "node" in owner.lower():
                found.append(
                    f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:"
                    f"{item.lineno} {owner}.{item.attr}"
                )
    return found


def outside_the_core() -> list[Path]:
    paths = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] == "scripts" or (layer_of(parts) not in {None, "core", "crypto"} and parts[0] != "build"):
            paths.append(path)
    return paths


def test_nothing_outside_the_core_reaches_into_a_node() -> None:
    assert [read for path in outside_the_core() for read in node_internals_read(path)] == []


def test_the_rule_sees_a_node_reached_into(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("n = self._node.table.get(b'')\nx = nodes[0].store\nkept = self.store\n")
    assert sorted(read.split(" ")[1] for read in node_internals_read(module)) == ["nodes[0].store", "self._node.table"]
    assert any(path.parts[-2] == "blobs" for path in outside_the_core())
