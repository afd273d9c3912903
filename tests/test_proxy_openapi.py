"""`/openapi.json` is what the server does: schemathesis's stateless checks against a live `dhtmesh run`."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dhtmesh.proxy.openapi import STANDARD_METHODS, document
from dhtmesh.proxy.routes import ROUTES
from dhtmesh.testing import NodeProcess

SCHEMATHESIS = str(Path(sys.executable).with_name("st"))
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# A node with no farmers truthfully answers a blob upload 503 (documented): the one 5xx it may give.
CONFIG = """
[[operations]]
include-path = "/api/blob"
include-method = "POST"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""


def test_every_documented_operation_answers_as_documented(spawn: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """Every status, content type and body schema the server gives is in the document, and no input
    makes it fail (5xx). Listen streams never end, so they are left out; the examples per operation
    are bounded and the seed fixed, so the run is short and the same each time."""
    node = spawn("documented")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [SCHEMATHESIS, "--config-file", str(config), "run", f"{node.url}/openapi.json"]
    command += ["--phases", "examples,coverage,fuzzing", "--checks", CHECKS, "--max-examples", "15"]
    command += ["--exclude-path-regex", "/listen$", "--workers", "1", "--request-timeout", "10", "--seed", "14"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)  # its cache too
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    tested = [
        (method, path)
        for path, item in document(ROUTES)["paths"].items()
        for method in item
        if method.upper() in STANDARD_METHODS and not path.endswith("/listen") and path != "/openapi.json"
    ]  # schemathesis leaves out the document's own route
    assert f"Tested: {len(tested)}" in run.stdout, run.stdout[-2000:]
