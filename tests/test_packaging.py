"""The distribution ships every package of the repository: a folder with an `__init__.py` that is
missing from pyproject's list works in an editable checkout and breaks every installed copy."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"dhtmesh"}
    for init in ROOT.glob("*/**/__init__.py"):
        relative = init.parent.relative_to(ROOT)
        if relative.parts[0] in ("tests", "scripts", "build") or any(p.startswith(".") for p in relative.parts):
            continue
        found.add(".".join(("dhtmesh", *relative.parts)))
    assert found == listed
