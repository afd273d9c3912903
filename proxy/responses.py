"""How the proxy answers: JSON lines and documents, chunked streams, and a request's JSON body (its
refusals are `errors.BadRequest`, answered by the error table)."""

from typing import Any

import orjson
from aiohttp import web

from dhtmesh.api.documents import json_line
from dhtmesh.proxy.errors import BadRequest

JSON_HEADERS = {"Content-Type": "application/json"}


def json_reply(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_line(document), status=status, headers=JSON_HEADERS)


async def open_stream(request: web.Request) -> web.StreamResponse:
    """A chunked 200 whose headers are sent at once, before the first line."""
    response = web.StreamResponse(headers=JSON_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def json_body(request: web.Request) -> dict:
    return json_object(await request.read())


def json_object(raw: bytes, empty: dict | None = None) -> dict:
    """A body's JSON object; an empty body is `empty` where a route allows one (else a refusal)."""
    if not raw.strip():
        if empty is not None:
            return empty
        raise BadRequest("Missing parameters")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest("Incorrect JSON") from error
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document
