"""dataserv's `/api/*` routes over the mesh's farmer registry: status codes and messages as dataserv's
develop branch gives them, errors as JSON `{"err"}`.

A route that changes a farmer is checked in dataserv 2.2.13's order, signature first (401), so an
unsigned request never learns whether a farmer exists. The signature (crypto/request_auth.py) must be
the farmer's own; the new state itself arrives as the value the farmer signed, in the `Farmer-Record`
header (base64 of the value's wire form), and the registry stores it only if it is what the request
makes of the current record.
"""

import binascii
import re

from aiohttp import web

from dhtmesh.api import paths
from dhtmesh.api.records import RECORD_HEADER, record_from_header
from dhtmesh.api.value_json import value_to_json
from dhtmesh.crypto.addresses import InvalidAddress, address_payload, node_address, parse_node_id
from dhtmesh.crypto.request_auth import verify_request
from dhtmesh.node.audits.reputation import Reputation
from dhtmesh.node.records.audit import AuditEntry
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, FarmerRecord
from dhtmesh.node.records.farmer_events import (
    capacity_bytes,
    pinged,
    uptime_percent,
    with_bandwidth,
    with_height,
)
from dhtmesh.node.values.value import Value
from dhtmesh.proxy.clients import client_of
from dhtmesh.proxy.errors import BadRequest, NotFound, TooLarge, TooManyRequests
from dhtmesh.proxy.responses import json_reply
from dhtmesh.proxy.route import JSON, NODE, REGISTRY, REPLAY_GUARD, REPUTATION, SIGNED_LIMITER, STANDINGS, Route

TERABYTE = 1024**4
TOTAL_PERIOD_MINUTES = 30  # dataserv's /api/total "id": the half-hour it was computed in
# Signed requests a node takes per second, in all and per client address. The total keeps the replay
# guard from ever filling within its window (1,000/s x 40 s < 65,536 entries), so a flood costs others
# throughput, never the guard's memory of what it accepted.
SIGNED_REQUESTS_TOTAL = 1000.0
SIGNED_REQUESTS_PER_CLIENT = 200.0
_NUMBER = re.compile(r"[0-9]{1,40}(\.[0-9]{0,40})?")


def _signed_record(request: web.Request) -> Value | None:
    text = request.headers.get(RECORD_HEADER)
    if text is None:
        return None
    try:
        return record_from_header(text)
    except (binascii.Error, ValueError, TypeError) as error:  # base64's and msgpack's own errors: not a layer's
        raise BadRequest(f"{RECORD_HEADER} is not a base64 msgpack value ({error})") from error


def _node_id(request: web.Request) -> bytes:
    return parse_node_id(request.match_info["nodeid"])


async def _signing_farmer(request: web.Request) -> bytes:
    """The node id in the path, once the request is proven to be signed by that farmer, fresh, and new.
    The signature also covers the `Farmer-Record` header, so a relay cannot swap the record."""
    node = request.app[NODE]
    if not request.app[SIGNED_LIMITER].allow_host(client_of(request)):
        raise TooManyRequests("too many signed requests; retry in a second.")
    body = await request.read()
    try:
        node_id: bytes | None = parse_node_id(request.match_info["nodeid"])
    except InvalidAddress:
        node_id = None  # said after the signature check: 401 comes first
    verify_request(
        request.headers,
        request.method,
        request.raw_path,
        body,
        node.node_id,
        request.app[REPLAY_GUARD] if node_id is not None else None,
        signer_id=node_id,
        bound=request.headers.get(RECORD_HEADER, ""),
    )
    return node_id if node_id is not None else _node_id(request)


def farmer_json(record: FarmerRecord, now: int, reputation: Reputation | None = None) -> dict:
    """dataserv's farmer JSON; with the farmer's audit reputation beside its claims, when known."""
    document = {
        "nodeid": record.node_id.hex(),
        "payout_addr": record.payout_addr,
        "last_seen": max(0, now - record.last_seen),
        "height": record.height,
        "uptime": uptime_percent(record, now),
        "reg_time": record.reg_time,
        "bandwidth_upload": record.bandwidth_upload,
        "bandwidth_download": record.bandwidth_download,
        "ip": record.ip,
    }
    if reputation is not None:
        document["reputation"] = reputation.to_json()
    return document


def _text(message: str) -> web.Response:
    return web.Response(text=message)


# ---- changes, signed by the farmer ----------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    node_id = await _signing_farmer(request)
    payout = request.match_info.get("payout_addr") or node_address(node_id)
    try:
        address_payload(payout)
    except InvalidAddress as error:  # the table's text names a node id; this one is the payout's
        raise BadRequest(f"Invalid payout address ({error}).") from error
    registry = request.app[REGISTRY]
    record = await registry.register(node_id, payout, _signed_record(request))
    return json_reply(farmer_json(record, registry.now()))


async def ping(request: web.Request) -> web.Response:
    node_id = await _signing_farmer(request)
    await request.app[REGISTRY].change(node_id, pinged, _signed_record(request))
    return _text("Ping accepted.")


async def height(request: web.Request) -> web.Response:
    node_id = await _signing_farmer(request)
    shards = _count(request, "height")
    if shards > HEIGHT_LIMIT:
        raise TooLarge(f"Height limit exceeded ({shards} > {HEIGHT_LIMIT}).")

    def event(record: FarmerRecord, now: int, ip: str) -> FarmerRecord:
        return with_height(record, shards, now, ip)

    await request.app[REGISTRY].change(node_id, event, _signed_record(request))
    return _text("Height accepted.")


async def bandwidth(request: web.Request) -> web.Response:
    node_id = await _signing_farmer(request)
    upload, download = _count(request, "upload"), _count(request, "download")

    def event(record: FarmerRecord, now: int, ip: str) -> FarmerRecord:
        return with_bandwidth(record, upload, download, now, ip)

    await request.app[REGISTRY].change(node_id, event, _signed_record(request))
    return _text("Bandwidth accepted.")


def _count(request: web.Request, name: str) -> int:
    """A non-negative number from the path, integer or decimal (truncated, as dataserv's integer
    columns store it). At most 40 digits each side: no exponent, nothing that costs time to convert."""
    text = request.match_info[name]
    if not _NUMBER.fullmatch(text):
        raise BadRequest(f"{name} must be a non-negative number (digits, optionally a decimal part).")
    return int(text.split(".")[0])


# ---- the public listing ---------------------------------------------------------------------------


async def _online(request: web.Request) -> tuple[list[FarmerRecord], int]:
    registry = request.app[REGISTRY]
    return await registry.online(), registry.now()


async def online_json(request: web.Request) -> web.Response:
    farmers, now = await _online(request)
    reputations = await request.app[REPUTATION].of_many([record.node_id for record in farmers])
    return json_reply({"farmers": [farmer_json(r, now, reputations[r.node_id]) for r in farmers]})


async def online_text(request: web.Request) -> web.Response:
    farmers, now = await _online(request)
    lines = [f"{r.payout_addr} |  Last Seen: {_ago(now - r.last_seen)} | Height: {r.height}<br/>" for r in farmers]
    return web.Response(text="\n".join(lines), content_type="text/html")


def _ago(seconds: int) -> str:
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}(s)"
    return f"{max(0, seconds)} second(s)"


async def total(request: web.Request) -> web.Response:
    farmers, now = await _online(request)
    total_bytes = sum(capacity_bytes(record) for record in farmers)
    return json_reply(
        {
            "id": now // 60 // TOTAL_PERIOD_MINUTES,
            "total_TB": round(total_bytes / TERABYTE, 2),
            "total_farmers": len(farmers),
        }
    )


async def address(request: web.Request) -> web.Response:
    return json_reply({"address": node_address(request.app[NODE].node_id)})


async def farmer(request: web.Request) -> web.Response:
    node_id = _node_id(request)
    registry = request.app[REGISTRY]
    found = await registry.find(node_id)
    if found is None:
        raise NotFound("Farmer not found.")
    document = farmer_json(found[1], registry.now(), await request.app[REPUTATION].of(node_id))
    document["jobs"] = (await request.app[STANDINGS].of(node_id)).to_json()  # as a worker: slices outvoted
    return json_reply(document)


async def farmer_audits(request: web.Request) -> web.Response:
    """Every audit of the farmer that anyone published (within the window), newest first, each marked
    with whether its auditor is a registered farmer, and the reputation those audits add up to.
    Audits are listed whether or not the farmer is registered."""
    node_id = _node_id(request)
    book = request.app[REPUTATION]
    logs = await book.logs(node_id)
    registered = await book.auditors()
    audits = [audit_json(log.auditor_id in registered, node_id, log.auditor_id, e) for log in logs for e in log.entries]
    audits.sort(key=lambda audit: audit["time"], reverse=True)
    reputation_now = await book.reputation_from(logs)
    return json_reply({"nodeid": node_id.hex(), "reputation": reputation_now.to_json(), "audits": audits})


def audit_json(registered: bool, farmer_id: bytes, auditor_id: bytes, entry: AuditEntry) -> dict:
    return {
        "auditor": auditor_id.hex(),
        "auditor_registered": registered,
        "farmer": farmer_id.hex(),
        "blob": entry.blob_id.hex(),
        "chunk": entry.root.hex(),
        "chunk_bytes": entry.length,
        "challenge": {"nonce": entry.nonce.hex(), "blocks": list(entry.indices)},
        "verdict": str(entry.outcome),
        "time": entry.time,
    }


async def farmer_record(request: web.Request) -> web.Response:
    """The farmer's record as the farmer signed it (value JSON), for clients that build the next one."""
    node_id = _node_id(request)
    found = await request.app[REGISTRY].find(node_id)
    if found is None:
        raise NotFound("Farmer not found.")
    return json_reply(value_to_json(found[0]))


# ---- the table ----------------------------------------------------------------------------------

_SIGNED_HEADERS = {
    "Date": "when the request was signed (HTTP date); a stale or reused request is refused",
    "Authorization": "the request's Ed25519 signature by the farmer's key (crypto/request_auth.py)",
    RECORD_HEADER: "the farmer's new record as it signed it: base64 of the value's msgpack wire form",
}
_SIGNED_ERRORS = {
    400: "bad node id or record",
    401: "bad signature",
    429: "too many signed requests",
    409: "refused by this node's store: by its policy or a quota (as on POST /key)",
    503: "this node's storage fails",
    507: "this node's disk is full",
}
_CHANGE_ERRORS = {**_SIGNED_ERRORS, 404: "unknown farmer", 409: "the record conflicts with the stored one, or a quota"}
_PLAIN = "text/plain"


def _both_methods(
    path: str, handler: object, summary: str, replies: dict[int, str], media: str, failure: str
) -> list[Route]:
    """dataserv's clients GET; POST is accepted too. Either changes the farmer's record."""
    return [
        Route(
            method,
            path,
            handler,  # type: ignore[arg-type]
            summary,
            replies=replies,
            unsafe_get=True,
            media=media,
            headers=_SIGNED_HEADERS,
            failure=failure,
        )
        for method in ("GET", "POST")
    ]


_REGISTER_REPLIES = {200: "the farmer JSON", **_SIGNED_ERRORS, 409: "already registered, or a store's refusal"}
_REGISTERED = "Registration Failed"

FARMER_ROUTES: list[Route] = [
    *_both_methods(
        paths.REGISTER_OWN,
        register,
        "register a farmer, payout to its own address",
        _REGISTER_REPLIES,
        JSON,
        _REGISTERED,
    ),
    *_both_methods(
        paths.REGISTER,
        register,
        "register a farmer with a payout address",
        {**_REGISTER_REPLIES, 400: "bad node id, payout or record"},
        JSON,
        _REGISTERED,
    ),
    *_both_methods(
        paths.PING,
        ping,
        "the farmer is online",
        {200: "Ping accepted.", **_CHANGE_ERRORS},
        _PLAIN,
        "Ping Failed",
    ),
    *_both_methods(
        paths.HEIGHT,
        height,
        "the farmer's capacity, in 128 MiB shards",
        {200: "Height accepted.", **_CHANGE_ERRORS, 413: "over the height limit"},
        _PLAIN,
        "Set height failed",
    ),
    *_both_methods(
        paths.BANDWIDTH,
        bandwidth,
        "the farmer's measured bandwidth",
        {200: "Bandwidth accepted.", **_CHANGE_ERRORS},
        _PLAIN,
        "Bandwidth Failed",
    ),
    Route(
        "GET",
        paths.ONLINE,
        online_text,
        "farmers seen in the last 5 minutes, one line each, highest first",
        media="text/html",
    ),
    Route("GET", paths.ONLINE_JSON, online_json, "farmers seen in the last 5 minutes, as JSON"),
    Route("GET", paths.TOTAL, total, "online farmers and their total capacity in TB"),
    Route("GET", paths.ADDRESS, address, "this node's address (base58check of its node id)"),
    Route(
        "GET",
        paths.FARMER,
        farmer,
        "one farmer, online or not",
        replies={200: "farmer JSON", 400: "bad node id", 404: "unknown"},
        failure="Farmer lookup failed",
    ),
    Route(
        "GET",
        paths.FARMER_AUDITS,
        farmer_audits,
        "the farmer's audits as their auditors signed them, newest first, and its reputation",
        replies={200: "`{nodeid, reputation, audits}`", 400: "bad node id"},
        failure="Audit lookup failed",
    ),
    Route(
        "GET",
        paths.FARMER_RECORD,
        farmer_record,
        "the farmer's signed record (value JSON), to build its next state on",
        replies={200: "value JSON", 400: "bad node id", 404: "unknown"},
        failure="Farmer lookup failed",
    ),
]
