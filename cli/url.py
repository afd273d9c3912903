"""The proxy a client command talks to: `--url`, else `$DHTMESH_URL`, else the local default; written as
`http://HOST:PORT` however it was given (no scheme, a trailing slash)."""

import argparse
import os
from urllib.parse import urlsplit

from dhtmesh.cli.errors import CliError

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "DHTMESH_URL"


def add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help=f"the node's proxy, http://HOST:PORT (default: ${URL_ENV}, else {DEFAULT_URL})",
    )


def proxy_url(given: str | None) -> str:
    """The proxy's base URL, without a trailing slash; a URL that cannot be one is a `CliError`."""
    source = "--url" if given is not None else f"${URL_ENV}"
    text = given if given is not None else os.environ.get(URL_ENV) or DEFAULT_URL
    text = text.strip()
    if "://" not in text:
        text = "http://" + text  # `127.0.0.1:8080`, `localhost:8080`: what curl also accepts
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parsing the port is what checks it
    except ValueError as error:
        raise CliError(f"{source}: {text} is not a URL ({error})") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"{source}: {text} is not an http://HOST:PORT URL")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise CliError(f"{source}: give the proxy's address only, like {DEFAULT_URL} (not {text})")
    return f"{parts.scheme}://{parts.netloc}"
