"""The OpenAPI 3 document of the proxy, generated from the route table so that it cannot drift.

OpenAPI has no place for methods outside HTTP's standard set; OpenDHT's LISTEN, SUBSCRIBE and
UNSUBSCRIBE are described under the path's `x-custom-methods` extension.
"""

import re
from collections.abc import Iterable
from typing import Any, Protocol

from dhtmesh import __version__

PARAMETERS = {
    "key": "40 hex characters, or any text (hashed with SHA-1)",
    "value_id": "a value id, decimal",
    "nodeid": "a farmer's node id: 40 lowercase hex characters, or its base58check address",
    "payout_addr": "a base58check address (checksum verified)",
    "height": "capacity in 128 MiB shards, at most 200000",
    "upload": "upload bandwidth, a non-negative number",
    "download": "download bandwidth, a non-negative number",
    "blob_id": "a blob's id: 64 lowercase hex characters (the Merkle root over its chunks)",
}
STANDARD_METHODS = {"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"}


class RouteLike(Protocol):
    method: str
    path: str
    summary: str
    body: str | None
    replies: dict[int, str]
    streams: bool


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
    media = "application/x-ndjson" if route.streams else "application/json"
    operation: dict[str, Any] = {
        "summary": route.summary,
        "responses": {
            str(status): {"description": text, "content": {media: {"schema": {"type": "object"}}}}
            for status, text in route.replies.items()
        },
    }
    if route.body:
        operation["requestBody"] = {
            "description": route.body,
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    parameters = re.findall(r"{(\w+)}", route.path)
    if parameters:
        operation["parameters"] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": PARAMETERS.get(name, name),
                "schema": {"type": "string"},
            }
            for name in parameters
        ]
    return operation
