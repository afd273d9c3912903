"""The aiohttp application: thin routes over `DhtNode`, errors as JSON `{"err": ...}` with a 4xx code.

Route shapes follow OpenDHT's proxy (`GET /`, `GET|POST /key/{hash}`, `GET /key/{hash}/listen`), so
its real clients work; the node API does the work.
"""

import logging
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web
from dhtmesh.node.dht import DhtNode, PutRefused
from dhtmesh.node.values.value import InvalidValue, new_value_id
from dhtmesh.proxy.keys import parse_key
from dhtmesh.proxy.value_json import ValueJsonError, value_from_json, value_to_json

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024  # a 64 KiB value in base64 plus its fields, with room to spare
NODE_KEY = web.AppKey("node", DhtNode)
JSON_HEADERS = {"Content-Type": "application/json", "Access-Control-Allow-Origin": "*"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_line(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS) + b"\n"


def json_reply(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_line(document), status=status, headers=JSON_HEADERS)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    try:
        return await handler(request)
    except BadRequest as error:
        node.counters.add("http_bad_requests")
        return json_reply({"err": str(error)}, error.status)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        node.counters.add("http_bad_requests")
        return json_reply({"err": error.reason}, error.status)


def _node(request: web.Request) -> DhtNode:
    return request.app[NODE_KEY]


async def node_info(request: web.Request) -> web.Response:
    info = _node(request).info()
    info["public_ip"] = request.remote
    return json_reply(info)


async def get_values(request: web.Request) -> web.StreamResponse:
    key = parse_key(request.match_info["key"])
    response = await _open_stream(request)
    for value in await _node(request).get(key):
        await response.write(json_line(value_to_json(value)))
    await response.write_eof()
    return response


async def put_value(request: web.Request) -> web.Response:
    node = _node(request)
    key = parse_key(request.match_info["key"])
    document = await _json_body(request)
    try:
        value = value_from_json(document)
    except ValueJsonError as error:
        raise BadRequest(str(error)) from error
    if value.id == 0:
        if value.signed:
            raise BadRequest("a signed value must carry the id it was signed with")
        value = replace(value, id=new_value_id())
    try:
        result = await node.put(key, value, permanent=bool(document.get("permanent")))
    except InvalidValue as error:
        raise BadRequest(str(error)) from error
    except PutRefused as error:
        raise BadRequest(str(error), status=409) from error
    return json_reply(value_to_json(result.value) | {"replicas": result.replicas})


async def listen(request: web.Request) -> web.StreamResponse:
    key = parse_key(request.match_info["key"])
    response = await _open_stream(request)
    # The handler is cancelled when the client goes away (handler_cancellation), which closes the listener.
    with _node(request).listen(key) as listener:
        async for event in listener:
            await response.write(json_line(value_to_json(event.value, expired=event.expired)))
    return response


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=JSON_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def _json_body(request: web.Request) -> dict:
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


def create_app(node: DhtNode) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    app[NODE_KEY] = node
    app.router.add_get("/", node_info)
    app.router.add_get("/node/info", node_info)
    app.router.add_get("/key/{key}", get_values)
    app.router.add_post("/key/{key}", put_value)
    app.router.add_get("/key/{key}/listen", listen)
    return app


class ProxyServer:
    """Runs the app on one address; `url` is known once started (port 0 picks a free port)."""

    def __init__(self, node: DhtNode, host: str, port: int) -> None:
        self._runner = web.AppRunner(create_app(node), handler_cancellation=True, access_log=None)
        self._host = host
        self._port = port
        self.url = ""

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    async def stop(self) -> None:
        await self._runner.cleanup()
