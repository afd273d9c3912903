"""The OpenAPI 3 document of the proxy, generated from the route table so that it cannot drift.

Each operation lists every status its route can answer, and each answer's content type and schema as
the server sends it: a success as the route's `media` says (OpenDHT's streams are `application/json`,
one document per line, so they carry no single schema), every error as JSON `{"err"}`. The test suite
holds the server to it (schemathesis against a live node). OpenAPI has no place for methods outside
HTTP's standard set; OpenDHT's LISTEN, SUBSCRIBE and UNSUBSCRIBE are described under the path's
`x-custom-methods` extension.
"""

import re
from collections.abc import Iterable
from typing import Any, Protocol

from dhtmesh import __version__
from dhtmesh.proxy.origins import SAFE_METHODS

_BASE58 = "[1-9A-HJ-NP-Za-km-z]"
_NUMBER = "^[0-9]{1,40}(\\.[0-9]{0,40})?$"
# What each path variable takes. A key is any text but `.` and `..`, which clients resolve away
# before sending (RFC 3986 §5.2.4), so no request can carry them.
PARAMETERS: dict[str, tuple[str, dict[str, Any]]] = {
    "key": (
        "40 hex characters, or any other text (hashed with SHA-1 as sent, percent-escapes and all)",
        {"type": "string", "minLength": 1, "not": {"enum": [".", ".."]}},
    ),
    "value_id": ("a value id, decimal, 1 to 2^64-1", {"type": "string", "pattern": "^[0-9]{1,20}$"}),
    "nodeid": (
        "a farmer's node id: 40 lowercase hex characters, or its base58check address",
        {"type": "string", "pattern": f"^([0-9a-f]{{40}}|{_BASE58}{{25,40}})$"},
    ),
    "payout_addr": ("a base58check address (checksum verified)", {"type": "string", "pattern": f"^{_BASE58}{{1,64}}$"}),
    "height": ("capacity in 128 MiB shards, at most 200000", {"type": "string", "pattern": _NUMBER}),
    "upload": ("upload bandwidth, a non-negative number", {"type": "string", "pattern": _NUMBER}),
    "download": ("download bandwidth, a non-negative number", {"type": "string", "pattern": _NUMBER}),
    "blob_id": (
        "a blob's id: 64 lowercase hex characters (the Merkle root over its chunks)",
        {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    ),
    "name": (
        "an account name: 1 to 64 of A-Z a-z 0-9 . _ @ -",
        {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"},
    ),
    "job_id": (
        "a job's id: 40 hex characters (0x before them is taken too)",
        {"type": "string", "pattern": "^(0x)?[0-9a-fA-F]{40}$"},
    ),
    "slice_number": ("a slice's number, from 1", {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"}),
    "sid": (
        "a stream's name, or several joined with `+` (`a+b`, at most 16; `*`: every stream, for a batch push)",
        {"type": "string", "minLength": 1},
    ),
}
STANDARD_METHODS = {"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"}
JSON = "application/json"
ERROR = {"type": "object", "required": ["err"], "properties": {"err": {"type": "string"}}}
# Refusals any route of a kind can give, whatever its own replies say (app.py and origins.py).
_FOREIGN_ORIGIN = "a web page of an origin not allowed with --allow-origin may not change state"
_BODY_TOO_LARGE = "the body is over the node's limit"


class RouteLike(Protocol):
    method: str
    path: str
    summary: str
    body: str | None
    replies: dict[int, str]
    streams: bool
    unsafe_get: bool
    media: str | None
    body_media: str
    headers: dict[str, str]
    json_type: str


def document(routes: Iterable[RouteLike]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        item = paths.setdefault(route.path, {})
        operation = _operation(route)
        if route.method in STANDARD_METHODS:
            item[route.method.lower()] = operation
        else:
            item.setdefault("x-custom-methods", {})[route.method] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "dhtmesh proxy (OpenDHT REST API)", "version": __version__},
        "paths": paths,
    }


def _operation(route: RouteLike) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "responses": {
            str(status): {"description": text, **_content(route, status)}
            for status, text in sorted(_replies(route).items())
        },
    }
    if route.body:
        operation["requestBody"] = {
            "description": route.body,
            "required": True,
            "content": {route.body_media: {"schema": {"type": "object"} if route.body_media == JSON else {}}},
        }
    parameters = [_path_parameter(name) for name in re.findall(r"{(\w+)}", route.path)]
    parameters += [
        {"name": name, "in": "header", "description": text, "schema": {"type": "string"}}
        for name, text in route.headers.items()
    ]
    if parameters:
        operation["parameters"] = parameters
    return operation


def _replies(route: RouteLike) -> dict[int, str]:
    replies = dict(route.replies)
    if route.method not in SAFE_METHODS or route.unsafe_get:
        replies.setdefault(403, _FOREIGN_ORIGIN)
    if route.body:
        replies.setdefault(413, _BODY_TOO_LARGE)
    return replies


def _content(route: RouteLike, status: int) -> dict[str, Any]:
    if status >= 400:
        return {"content": {JSON: {"schema": ERROR}}}
    if route.media is None:
        return {}
    if route.streams:
        return {"content": {route.media: {}}}  # one JSON document per line: no single schema fits
    schema = {"type": route.json_type} if route.media == JSON else {"type": "string"}
    return {"content": {route.media: {"schema": schema}}}


def _path_parameter(name: str) -> dict[str, Any]:
    description, schema = PARAMETERS[name]
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}
