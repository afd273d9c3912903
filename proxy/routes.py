"""Every HTTP route of the proxy, as one table (`ROUTES`) that both the router and `/openapi.json` are
built from, and the thin handlers behind them. Handlers parse and format; the node does the work; a
refusal is raised, and answered by the error table (`errors.py`)."""

import time
from collections.abc import Awaitable
from dataclasses import replace

from aiohttp import web

from dhtmesh.api import paths
from dhtmesh.api.documents import json_line
from dhtmesh.api.value_json import public_key_from_text, value_from_json, value_to_json
from dhtmesh.node.dht import DhtNode, PutOptions, PutResult
from dhtmesh.node.values.value import Value, new_value_id
from dhtmesh.proxy.blob_routes import BLOB_ROUTES
from dhtmesh.proxy.clients import client_of, client_slot
from dhtmesh.proxy.errors import BadRequest, NotEnabled, NotFound
from dhtmesh.proxy.farmer_routes import FARMER_ROUTES
from dhtmesh.proxy.job_routes import JOB_ROUTES
from dhtmesh.proxy.keys import path_key
from dhtmesh.proxy.openapi import document
from dhtmesh.proxy.push import PushTarget
from dhtmesh.proxy.responses import JSON_HEADERS, json_body, json_reply, open_stream
from dhtmesh.proxy.route import LISTEN_SLOTS, NODE, PUSH, STATS, Route
from dhtmesh.proxy.stream_routes import STREAM_ROUTES
from dhtmesh.proxy.token_routes import TOKEN_ROUTES

PERMANENT_PUT_LIFE = 24 * 3600.0  # OpenDHT's proxy::OP_TIMEOUT

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "OPTIONS, GET, POST, LISTEN, SUBSCRIBE, UNSUBSCRIBE",
    "Access-Control-Allow-Headers": "content-type",
    "Access-Control-Max-Age": "86400",
}


# ---- node ---------------------------------------------------------------------------------------


async def node_info(request: web.Request) -> web.Response:
    info = request.app[NODE].info()
    info["public_ip"] = request.remote
    return json_reply(info)


async def node_stats(request: web.Request) -> web.Response:
    node, stats = request.app[NODE], request.app[STATS]
    announces = node.permanent_puts()
    info = node.info()
    info["public_ip"] = request.remote
    return json_reply(
        {
            # As OpenDHT counts them: the clients' listen streams (not the node's own listeners, such
            # as the farmer registry's), and the devices with push subscriptions.
            "listenCount": request.app[LISTEN_SLOTS].in_use,
            "pushListenersCount": request.app[PUSH].devices(),
            "putCount": len({key for key, _ in announces}),
            "totalPermanentPuts": len(announces),
            "requestRate": stats.rate(),
            "totalRequests": stats.total,
            "serverStartTime": int(stats.started),
            "lastUpdated": int(time.time()),
            "nodeInfo": info,
        }
    )


async def openapi(request: web.Request) -> web.Response:
    return json_reply(document(ROUTES))


# ---- keys ---------------------------------------------------------------------------------------


def _key(request: web.Request) -> bytes:
    return path_key(request)


async def get_values(request: web.Request) -> web.StreamResponse:
    response = await open_stream(request)
    async for value in request.app[NODE].get_stream(_key(request)):
        await response.write(json_line(value_to_json(value)))
    await response.write_eof()
    return response


async def listen(request: web.Request) -> web.StreamResponse:
    key = _key(request)
    # The handler is cancelled when the client goes away (handler_cancellation), closing the listener
    # and freeing the client's slot.
    with client_slot(request.app[LISTEN_SLOTS], request, "http_listens_refused"):
        listener = request.app[NODE].listen(key)  # before the status line: a refusal is still a 503
        with listener:
            response = await open_stream(request)
            async for event in listener:
                await response.write(json_line(value_to_json(event.value, expired=event.expired)))
    return response


async def put_value(request: web.Request) -> web.Response:
    document, value = await _value_body(request)
    key, node = _key(request), request.app[NODE]
    options = _put_options(request, document)
    if value.id == 0:
        if value.signed:
            raise BadRequest("a signed value must carry the id it was signed with")
        # OpenDHT's proxy: the same permanent content put again by its client is a refresh of the first
        # put, same id (another client's is its own put: it may cancel only its own).
        held = _held_permanent(node, key, value, options["client"]) if options["permanent"] else None
        value = held or replace(value, id=new_value_id())
    return await _put(node.put(key, value, **options))


def _held_permanent(node: DhtNode, key: bytes, value: Value, client: str) -> Value | None:
    return next((held for _, held in node.permanent_puts(key, client) if replace(held, id=0) == value), None)


def _put_options(request: web.Request, document: dict) -> PutOptions:
    """Whether a put is permanent, and for how long and for whom it is kept: like OpenDHT's proxy, a
    client's permanent put lasts a day unless the client puts it again (its client does so every
    22 h; a client that left stops); it is the client's, by its address, to cancel."""
    return {"permanent": _permanent(document), "until": time.time() + PERMANENT_PUT_LIFE, "client": client_of(request)}


async def sign_value(request: web.Request) -> web.Response:
    document, value = await _value_body(request)
    if value.signed:
        raise BadRequest("the value is already signed; POST it to /key/{key}")
    return await _put(request.app[NODE].put_signed(_key(request), value, **_put_options(request, document)))


async def encrypt_value(request: web.Request) -> web.Response:
    """`to` names the recipient: an OpenDHT identity by its 40-hex key id (the node needs an OpenDHT
    identity, and finds the recipient's certificate in the mesh), or a dhtmesh identity by its Ed25519
    public key (64 hex or PEM)."""
    document, value = await _value_body(request, allow_recipient=True)
    recipient = document.get("to")
    if not recipient:
        raise BadRequest("No destination found")
    if value.signed or value.encrypted:
        raise BadRequest("give the plain value: the node signs and encrypts it")
    node, key = request.app[NODE], _key(request)
    options = _put_options(request, document)
    if isinstance(recipient, str) and len(recipient) == 40:
        try:
            key_id = bytes.fromhex(recipient)
        except ValueError as error:
            raise BadRequest("to must be 40 hex (an OpenDHT key id) or an Ed25519 public key") from error
        return await _put(node.put_encrypted_opendht(key, value, key_id, **options))
    return await _put(node.put_encrypted(key, value, public_key_from_text(recipient), **options))


async def _value_body(request: web.Request, allow_recipient: bool = False) -> tuple[dict, Value]:
    document = await json_body(request)
    fields = {name: item for name, item in document.items() if not (allow_recipient and name == "to")}
    return document, value_from_json(fields)


def _permanent(document: dict) -> bool:
    permanent = document.get("permanent", False)
    if not isinstance(permanent, bool | dict):
        raise BadRequest("permanent must be a boolean or an object")
    return bool(permanent)


async def _put(operation: Awaitable[PutResult]) -> web.Response:
    result = await operation
    return json_reply(value_to_json(result.value) | {"replicas": result.replicas})


async def cancel_put(request: web.Request) -> web.Response:
    raw_id = request.match_info["value_id"]
    if not raw_id.isdecimal() or not 0 < int(raw_id) < 1 << 64:
        raise BadRequest("value id must be a decimal integer in [1, 2^64-1]")
    if not request.app[NODE].cancel_put(_key(request), int(raw_id), client_of(request)):
        raise NotFound("no permanent put of this client with this id under this key")
    return json_reply({"cancelled": raw_id})


async def options(request: web.Request) -> web.Response:
    return web.Response(headers={**JSON_HEADERS, **CORS_HEADERS})


# ---- push ---------------------------------------------------------------------------------------


async def subscribe(request: web.Request) -> web.StreamResponse:
    relay = request.app[PUSH]
    target, body = await _push_target(request)
    key = _key(request)
    created = relay.subscribe(key, target, client_of(request))
    if created or body.get("refresh") is True:
        return json_reply({})
    response = await open_stream(request)
    for value in request.app[NODE].held(key):
        await response.write(json_line(value_to_json(value)))
    await response.write_eof()
    return response


async def unsubscribe(request: web.Request) -> web.Response:
    target, _ = await _push_target(request)
    request.app[PUSH].unsubscribe(_key(request), target)
    return web.Response(headers=JSON_HEADERS)


async def _push_target(request: web.Request) -> tuple[PushTarget, dict]:
    if not request.app[PUSH].enabled:
        raise NotEnabled("push notifications are off: start the node with --pushserver URL")
    body = await json_body(request)
    return PushTarget.from_body(body), body


# ---- the table ----------------------------------------------------------------------------------

_VALUE = "a value JSON (id, type, data, utype; owner, seq, sig when signed); optional `permanent`"
_PUT_REPLIES = {
    200: "the stored value, with its id and `replicas`",
    400: "bad value",
    409: "refused by policy",
    503: "this node's storage fails",
    507: "this node's disk is full",
}
_PUSH = "`{key: push token, client_id, platform, session_id, topic, refresh}`"
_PUSH_ERRORS = {400: "no push token, or fields that are not strings", 501: "push is off (no --pushserver)"}
_LISTEN_REPLIES = {
    200: "one value JSON per line",
    429: "too many listen streams from this client",
    503: "this node listens to as many keys as it may",
}
_SUBSCRIBE_REPLIES = {200: "`{}`, or the key's values when renewed", 429: "too many subscriptions", **_PUSH_ERRORS}
_UNSUBSCRIBE_REPLIES = {200: "stopped (no body)", **_PUSH_ERRORS}
_CORS_REPLIES = {200: "CORS headers, no body"}

ROUTES: list[Route] = [
    Route("GET", paths.ROOT, node_info, "node info: id, routing table health, storage"),
    Route("GET", paths.NODE_INFO, node_info, "node info (same as /)"),
    Route("GET", paths.NODE_STATS, node_stats, "proxy and node statistics"),
    Route("GET", paths.OPENAPI, openapi, "this document"),
    Route("GET", paths.KEY, get_values, "the key's values, streamed as they are found", streams=True),
    Route("POST", paths.KEY, put_value, "put a value", _VALUE, _PUT_REPLIES),
    Route(
        "GET",
        paths.LISTEN,
        listen,
        "current, new and expired values; never ends",
        replies=_LISTEN_REPLIES,
        streams=True,
    ),
    Route("POST", paths.SIGN, sign_value, "sign as the node and put", _VALUE, _PUT_REPLIES),
    Route("POST", paths.ENCRYPT, encrypt_value, "encrypt to `to`, sign, put", _VALUE, _PUT_REPLIES),
    Route(
        "DELETE",
        paths.CANCEL,
        cancel_put,
        "cancel a permanent put: the value is no longer re-announced, and expires",
        replies={200: "cancelled", 400: "bad id", 404: "no such permanent put"},
    ),
    Route("OPTIONS", paths.KEY, options, "CORS preflight", replies=_CORS_REPLIES, media=None),
    Route("OPTIONS", paths.LISTEN, options, "CORS preflight", replies=_CORS_REPLIES, media=None),
    Route("GET", paths.KEY_OPTIONS, options, "CORS headers", replies=_CORS_REPLIES, media=None),
    Route("SUBSCRIBE", paths.KEY, subscribe, "push notifications for the key", _PUSH, _SUBSCRIBE_REPLIES, streams=True),
    Route("UNSUBSCRIBE", paths.KEY, unsubscribe, "stop push notifications", _PUSH, _UNSUBSCRIBE_REPLIES, media=None),
    *FARMER_ROUTES,
    *BLOB_ROUTES,
    *JOB_ROUTES,
    # ptg-api-server's paths (/token, /ping, /streams, /data) before the legacy /{key} that would take them.
    *TOKEN_ROUTES,
    *STREAM_ROUTES,
    # Legacy OpenDHT 1.x paths without the /key prefix.
    Route("GET", paths.LEGACY_KEY, get_values, "legacy: the key's values", streams=True),
    Route("POST", paths.LEGACY_KEY, put_value, "legacy: put a value", _VALUE, _PUT_REPLIES),
    Route("LISTEN", paths.LEGACY_KEY, listen, "legacy: listen", replies=_LISTEN_REPLIES, streams=True),
    Route("OPTIONS", paths.LEGACY_KEY, options, "legacy: CORS preflight", replies=_CORS_REPLIES, media=None),
    Route(
        "SUBSCRIBE", paths.LEGACY_KEY, subscribe, "legacy: push notifications", _PUSH, _SUBSCRIBE_REPLIES, streams=True
    ),
    Route(
        "UNSUBSCRIBE",
        paths.LEGACY_KEY,
        unsubscribe,
        "legacy: stop push notifications",
        _PUSH,
        _UNSUBSCRIBE_REPLIES,
        media=None,
    ),
]
