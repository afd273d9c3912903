"""How the proxy answers: JSON lines, JSON errors (`{"err": ...}` with a 4xx), chunked streams."""

from typing import Any

import orjson
from aiohttp import web

from dhtmesh.node.values.policy import Verdict

JSON_HEADERS = {"Content-Type": "application/json"}


# A store refusal that is about this node's disk, not about the value or a quota: 507 Insufficient
# Storage (RFC 4918) for a full disk, 503 for one that fails; the client may try another node. A client
# that has as many permanent puts as it may gets 429, as for listen streams.
_STATUS = {Verdict.REFUSE_DISK_FULL: 507, Verdict.REFUSE_STORAGE_ERROR: 503, Verdict.REFUSE_PERMANENT_PUTS: 429}


def refusal_status(verdict: Verdict, quota: int) -> int:
    """The status of a put the node's store refused: `quota` for a policy or quota refusal."""
    return _STATUS.get(verdict, quota)


class BadRequest(Exception):
    """A request the proxy refuses; becomes `{"err": message}` with `status`, counted as a bad request
    and, when given, under `counter` too (so an operator can tell a flood of one kind from others)."""

    def __init__(self, message: str, status: int = 400, counter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.counter = counter


def json_line(document: Any) -> bytes:
    """One JSON document and a newline, keys sorted as OpenDHT's jsoncpp writes them."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS) + b"\n"


def json_reply(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_line(document), status=status, headers=JSON_HEADERS)


async def open_stream(request: web.Request) -> web.StreamResponse:
    """A chunked 200 whose headers are sent at once, before the first line."""
    response = web.StreamResponse(headers=JSON_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def json_body(request: web.Request) -> dict:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("Missing parameters")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest("Incorrect JSON") from error
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document
