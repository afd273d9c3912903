"""The distribution ships every package of the repository (a folder with an `__init__.py` that is
missing from pyproject's list works in an editable checkout and breaks every installed copy), and its
license; the README names no file the repository lacks."""

import importlib.metadata
import re
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


def test_the_mit_license_is_in_the_repository_and_in_the_installed_metadata() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    metadata = importlib.metadata.metadata("dhtmesh")
    assert metadata["License-Expression"] == "MIT" and metadata.get_all("License-File") == ["LICENSE"]


def test_the_readme_names_only_files_the_repository_has() -> None:
    """Every `path/file.py` or `.md` the README names, and every file it links to, is in the repository
    (a bare `file.py` somewhere in it)."""
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`([\w./-]+\.(?:md|py))`", readme)) | set(re.findall(r"\]\(([\w./-]+)\)", readme))
    assert named
    here = {path.name for path in ROOT.rglob("*") if ".venv" not in path.parts}
    missing = [name for name in named if not ((ROOT / name).exists() if "/" in name else name in here)]
    assert missing == []
