"""The aiohttp application and server: the route table wired to a node, errors as JSON, CORS headers.

Every error the proxy gives is JSON `{"err": ...}` with a 4xx status (or a 5xx of the node's store or
services), its status and text from the one error table (`errors.py`), including aiohttp's own 404, 405
(with its `Allow` header) and 413, and counted; its own bugs are `{"err": "internal error"}` with a
500, counted and logged at most once a minute per kind (`failures.ErrorLog`). A request aiohttp's parser
refuses before any route sees it (not HTTP at all, or a request line or header over 8190 bytes) is
answered in JSON as well (`JsonErrorRequestHandler`), and counted as `http_malformed` too.
"""

import logging
from http import HTTPStatus
from typing import Any

import aiohttp.web_protocol
import aiohttp.web_server
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from dhtmesh.crypto.request_auth import ReplayGuard
from dhtmesh.node.blobs.upload import DEFAULT_BLOB_LIMIT
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.services import Services
from dhtmesh.node.stats import ErrorLog
from dhtmesh.node.wire.ratelimit import Buckets, RequestLimiter, Slots
from dhtmesh.proxy.errors import Refusal, answer, refusal_of
from dhtmesh.proxy.failures import BAD_REQUESTS, INTERNAL_ERRORS, ServerLogger, parser_refusal
from dhtmesh.proxy.farmer_routes import SIGNED_REQUESTS_PER_CLIENT, SIGNED_REQUESTS_TOTAL
from dhtmesh.proxy.job_auth import UNLOCKER, Unlocker
from dhtmesh.proxy.origins import origin_policy
from dhtmesh.proxy.push import PushRelay
from dhtmesh.proxy.responses import json_reply
from dhtmesh.proxy.route import (
    ACCOUNTS,
    ALLOWED_ORIGINS,
    BLOB_LIMIT,
    BLOB_READER,
    ERRORS,
    FAILURE_LABELS,
    FOLLOW_BUDGET,
    JOB_CHANGES,
    JOBS,
    LISTEN_SLOTS,
    NODE,
    PUSH,
    REGISTRY,
    REPLAY_GUARD,
    REPUTATION,
    SIGNED_LIMITER,
    STANDINGS,
    STATS,
    STREAMS,
    UPLOADER,
    served_paths,
)
from dhtmesh.proxy.routes import ROUTES
from dhtmesh.proxy.stats import RequestStats
from dhtmesh.proxy.stream_sockets import STREAM_SOCKETS, sockets_slots

log = logging.getLogger(__name__)

JOB_CHANGES_IN_ALL = 8  # job requests read at once (each body up to 16 MiB)
JOB_CHANGES_PER_CLIENT = 2
FOLLOWED_KEYS_PER_CLIENT = 48.0  # result keys per second a client's reads may make the node follow (a job: <= 32)
MAX_BODY = 256 * 1024  # a 64 KiB value in base64 plus its fields, with room to spare
# A listen stream is a listener here and, per key, a subscription on the key's replicas. A client
# (an app) listens to a handful of keys; 32 leaves room for several while one address cannot make
# this node hold thousands of streams (and the mesh keep thousands of subscriptions).
LISTENS_PER_CLIENT = 32
# All clients' streams: fewer than the keys a node may listen to (`NodeConfig.max_listened_keys`), so
# that a few clients cannot take every key.
LISTENS_IN_ALL = 192


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every refusal answered from the error table (`errors.TABLE`), aiohttp's own (404, 405, 413) as
    they are; anything else is a bug of the proxy's: a counted, logged 500."""
    request.app[STATS].count()
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        request.app[NODE].counters.add(BAD_REQUESTS)
        reply = json_reply({"err": error.reason}, error.status)
        if "Allow" in error.headers:  # a 405 says what the path takes (RFC 9110 §15.5.6)
            reply.headers["Allow"] = error.headers["Allow"]
        return reply
    except Exception as error:
        refusal = refusal_of(error)
        if refusal is None:
            if _cannot_answer(request):
                raise  # aiohttp closes the connection and reports the error (failures.ServerLogger)
            request.app[ERRORS].internal(error, f"{request.method} {request.path}")
            return json_reply({"err": "internal error"}, 500)
        _count_refusal(request, error, refusal)
        label = request.app[FAILURE_LABELS].get(request.match_info.handler)
        status, text = answer(error, refusal, label)
        reply = json_reply({"err": text}, status)
        reply.headers.extend(refusal.headers)
        return reply


def _count_refusal(request: web.Request, error: Exception, refusal: Refusal) -> None:
    counters = request.app[NODE].counters
    counters.add(BAD_REQUESTS)
    for counter in {refusal.counter, getattr(error, "counter", None)} - {None}:
        counters.add(counter)


def _cannot_answer(request: web.Request) -> bool:
    """Whether the status line is already sent (a stream that failed, or was cut short on purpose), or
    the client has gone: then no error answer can be given."""
    transport = request.transport
    return request.writer.output_size > 0 or transport is None or transport.is_closing()


async def _allow_any_origin(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Access-Control-Allow-Origin"] = "*"


def create_app(
    node: DhtNode,
    push: PushRelay | None = None,
    blob_limit: int = DEFAULT_BLOB_LIMIT,
    allowed_origins: frozenset[str] = frozenset(),
    services: Services | None = None,
) -> web.Application:
    """The proxy's application; `allowed_origins` are the web origins (`origins.parse_origin` forms)
    whose pages may change state. It serves the node's `services` (built, and stopped on cleanup, by
    the app itself when none are given)."""
    # A streamed blob upload reads the body itself and is bounded by `blob_limit`, not by this.
    # The origin policy runs inside json_errors, so its refusals are JSON and counted as well.
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors, origin_policy(ROUTES)])
    app[NODE] = node
    app[ERRORS] = ErrorLog(node.counters, INTERNAL_ERRORS)
    app[ALLOWED_ORIGINS] = allowed_origins
    app[LISTEN_SLOTS] = Slots("listen streams", LISTENS_IN_ALL, LISTENS_PER_CLIENT)
    app[PUSH] = push if push is not None else PushRelay(node, None)
    app[STATS] = RequestStats()
    if services is None:
        services = Services(node)
        app.on_startup.append(lambda _: services.start())  # its TCP port: the streams' homes reach it there
        app.on_cleanup.append(lambda _: services.stop())
    app[REGISTRY] = services.registry
    app[REPUTATION] = services.reputation
    app[REPLAY_GUARD] = ReplayGuard()
    app[SIGNED_LIMITER] = RequestLimiter(SIGNED_REQUESTS_TOTAL, SIGNED_REQUESTS_PER_CLIENT)
    app[UPLOADER] = services.uploader
    app[BLOB_READER] = services.reader
    app[BLOB_LIMIT] = blob_limit
    app[JOBS] = services.jobs
    app[ACCOUNTS] = services.accounts
    app[STREAMS] = services.streams
    app[STREAM_SOCKETS] = sockets_slots()
    app[STANDINGS] = services.standings
    app[JOB_CHANGES] = Slots("job changes", JOB_CHANGES_IN_ALL, JOB_CHANGES_PER_CLIENT)
    app[FOLLOW_BUDGET] = Buckets(FOLLOWED_KEYS_PER_CLIENT, FOLLOWED_KEYS_PER_CLIENT)
    app[UNLOCKER] = Unlocker()
    app[FAILURE_LABELS] = {route.handler: route.failure for route in ROUTES if route.failure}
    app.on_response_prepare.append(_allow_any_origin)
    for route in ROUTES:
        for path in served_paths(route.path):
            app.router.add_route(route.method, path, route.handler)
    return app


def accept_custom_methods() -> None:
    """Let requests with OpenDHT's legacy methods (LISTEN) reach the router.

    aiohttp's C parser (llhttp) answers 400 to any method it does not know, before a handler runs; its
    pure-Python parser accepts every method token. aiohttp has no per-server switch for this, so the
    parser is chosen for the process (the same effect as AIOHTTP_NO_EXTENSIONS, for the server only).
    """
    aiohttp.web_protocol.HttpRequestParser = HttpRequestParserPy  # type: ignore[misc]


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's per-connection handler, answering what it answers itself (a request its parser refuses,
    which no middleware sees) in JSON `{"err"}` like every other refusal of the proxy.

    aiohttp has no setting for this (its issue #3287); its answer is made by `handle_error`, which this
    overrides after aiohttp has logged the error (`failures.ServerLogger` counts it)."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if an answer was already begun
        if isinstance(exc, HttpProcessingError):
            status, text = parser_refusal(exc)
        else:  # a failure outside the routes' middleware (a 500), or aiohttp's handler timeout (504)
            text = "internal error" if status == 500 else HTTPStatus(status).phrase
        reply = json_reply({"err": text}, status)
        reply.headers["Access-Control-Allow-Origin"] = "*"  # as on every answer; no app signal runs here
        reply.force_close()  # the rest of the connection's bytes cannot be trusted to be a request
        return reply


def answer_parser_errors_in_json() -> None:
    """Make aiohttp's servers use `JsonErrorRequestHandler`: like the parser above, aiohttp builds its
    connection handler by name (`web_server.RequestHandler`) with no per-server switch."""
    aiohttp.web_server.RequestHandler = JsonErrorRequestHandler  # type: ignore[misc]


class ProxyServer:
    """Runs the app on one address; `url` is known once started (port 0 picks a free port)."""

    def __init__(
        self,
        node: DhtNode,
        host: str,
        port: int,
        push_gateway: str | None = None,
        blob_limit: int = DEFAULT_BLOB_LIMIT,
        allowed_origins: frozenset[str] = frozenset(),
        services: Services | None = None,
    ) -> None:
        self.push = PushRelay(node, push_gateway)
        app = create_app(node, self.push, blob_limit, allowed_origins, services)
        logger = ServerLogger(app[ERRORS], node.counters)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, logger=logger)
        self._host = host
        self._port = port
        self.url = ""

    async def start(self) -> None:
        accept_custom_methods()
        answer_parser_errors_in_json()
        await self.push.start()
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    async def stop(self) -> None:
        await self.push.stop()
        await self._runner.cleanup()
