"""ptg-api-server's streams and data routes (`STREAM_ROUTES`): the REST handlers, shaped as ptg shapes its
answers, and the table entries of the two data WebSockets (`stream_sockets`). Every route needs a valid
token first (`authenticated`: 401 otherwise); handlers parse and format, `Streams` does the work, and its
refusals are answered by the error table (unknown stream 404, bad request 400, entry too large 413,
homes out of reach 503).

Where this differs from ptg (on purpose): an unknown stream's info and delete are 404, not 200; `PUT`
creates the stream; a multipart part may be named anything (ptgctl names it after its stream).
"""

import asyncio
import datetime
from collections.abc import Sequence

import orjson
from aiohttp import BodyPartReader, web

from dhtmesh.api import paths
from dhtmesh.api.stream_frames import (
    ALL,
    MAX_BATCH_ENTRIES,
    MAX_ENTRY,
    MAX_FRAME_BYTES,
    MAX_STREAMS,
    check_sid,
    pack_entries,
    parse_count,
    parse_cursors,
    parse_flag,
    parse_sids,
)
from dhtmesh.node.streams.errors import EntryTooLarge, UnknownStream
from dhtmesh.node.streams.service import Entry, StreamInfo, Streams
from dhtmesh.proxy.errors import BadRequest, TooLarge
from dhtmesh.proxy.responses import json_body, json_reply
from dhtmesh.proxy.route import STREAMS, Route
from dhtmesh.proxy.stream_sockets import pull, push, query_field
from dhtmesh.proxy.token_routes import authenticated, token_of

MAX_POST_BYTES = MAX_FRAME_BYTES  # a multipart POST's entries, in all
MAX_OFFSETS_HEADER = 60_000  # bytes of `entry-offset`: under http.client's 64 KiB line (ptgctl uses requests)
INFO_AT_ONCE = 16  # stream infos `GET /streams?info=true` asks for concurrently
OCTETS = "application/octet-stream"


async def _caller(request: web.Request) -> tuple[Streams, str]:
    """The streams service and the caller's token, once the token is valid (else 401)."""
    await authenticated(request)
    token = token_of(request)
    assert token is not None  # authenticated() refused a request without one
    return request.app[STREAMS], token


# ---- streams ------------------------------------------------------------------------------------


def info_json(info: StreamInfo) -> dict:
    """ptg's `XINFO STREAM` shape: first and last entries as ids, their times in ISO 8601 (UTC), meta as
    a JSON string; `bytes` and `homes` are this mesh's own."""
    first, last = info.first, info.last
    return {
        "sid": info.sid,
        "length": info.length,
        "radix-tree-keys": 0,
        "radix-tree-nodes": 0,
        "last-generated-id": info.last_generated_id,
        "max-deleted-entry-id": info.max_deleted_id,
        "entries-added": info.entries_added,
        "recorded-first-entry-id": first.id if first else "0-0",
        "groups": info.groups,
        "first-entry": first.id if first else None,
        "last-entry": last.id if last else None,
        "first-entry-time": _iso(first.id) if first else None,
        "last-entry-time": _iso(last.id) if last else None,
        "meta": orjson.dumps(info.meta).decode(),
        "bytes": info.bytes,
        "homes": info.homes,
    }


def _iso(entry_id: str) -> str:
    ms = int(entry_id.partition("-")[0])
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


def _sid(request: web.Request) -> str:
    return query_field(check_sid, request.match_info["sid"])


async def list_streams(request: web.Request) -> web.Response:
    streams, token = await _caller(request)
    names = await streams.names(token)
    if not query_field(parse_flag, request.query.get("info")):
        return json_reply(names)
    infos: list[dict] = []
    for start in range(0, len(names), INFO_AT_ONCE):
        batch = names[start : start + INFO_AT_ONCE]
        found = await asyncio.gather(*(streams.info(token, sid) for sid in batch), return_exceptions=True)
        for result in found:
            if isinstance(result, UnknownStream):
                continue  # deleted since it was listed
            if isinstance(result, BaseException):
                raise result
            infos.append(info_json(result))
    return json_reply(infos)


async def stream_info(request: web.Request) -> web.Response:
    streams, token = await _caller(request)
    return json_reply(info_json(await streams.info(token, _sid(request))))


async def put_stream(request: web.Request) -> web.Response:
    streams, token = await _caller(request)
    meta = await json_body(request)
    override = query_field(parse_flag, request.query.get("override"))
    stored = await streams.create(token, _sid(request), meta, override)
    return json_reply(orjson.dumps(stored).decode())  # ptg answers the meta as a JSON string


async def delete_stream(request: web.Request) -> web.Response:
    """`a+b` deletes each; ptg's answer per stream, `[1, entries removed, 1]` (its pipeline's DEL meta,
    XTRIM, DEL key). Every stream is looked up first, so an unknown one (404) deletes none."""
    streams, token = await _caller(request)
    sids = query_field(parse_sids, request.match_info["sid"])
    infos = [await streams.info(token, sid) for sid in sids]
    answer: list[int] = []
    for info in infos:
        await streams.delete(token, info.sid)
        answer += [1, info.length, 1]
    return json_reply(answer)


# ---- data ---------------------------------------------------------------------------------------


async def post_data(request: web.Request) -> web.Response:
    """Each multipart part is one entry: of the route's stream; with `a+b` or `*`, of the stream its
    filename (else its name) says. The new ids, in the parts' order."""
    streams, token = await _caller(request)
    sids = query_field(parse_sids, request.match_info["sid"], True)
    parts = await _parts(request, sids)
    if not parts:
        raise BadRequest("no entries: send multipart parts named `entries`")
    positions: dict[str, list[int]] = {}
    for index, (sid, _) in enumerate(parts):
        positions.setdefault(sid, []).append(index)
    if len(positions) > MAX_STREAMS:  # one append each, at once: `*` names any
        raise BadRequest(f"a POST is for at most {MAX_STREAMS} streams")
    appended = await asyncio.gather(
        *(streams.append(token, sid, [(parts[i][1], None) for i in where]) for sid, where in positions.items())
    )
    ids = [""] * len(parts)
    for where, new_ids in zip(positions.values(), appended, strict=True):
        for index, new_id in zip(where, new_ids, strict=True):
            ids[index] = new_id
    return json_reply(ids)


async def _parts(request: web.Request, sids: Sequence[str]) -> list[tuple[str, bytes]]:
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as error:  # aiohttp's refusals of a non-multipart body
        raise BadRequest("the body is multipart/form-data, one part per entry") from error
    parts: list[tuple[str, bytes]] = []
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("a part is an entry, not a nested multipart")
        if len(parts) >= MAX_BATCH_ENTRIES:
            raise TooLarge(f"at most {MAX_BATCH_ENTRIES} entries in one POST")
        data = await _part_bytes(part, MAX_POST_BYTES - total)
        total += len(data)
        parts.append((_part_stream(part, sids), data))
    return parts


async def _part_bytes(part: BodyPartReader, room: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > MAX_ENTRY:
            raise EntryTooLarge(f"an entry is at most {MAX_ENTRY} bytes")
        if size > room:
            raise TooLarge(f"a POST carries at most {MAX_POST_BYTES} bytes of entries")
        chunks.append(chunk)
    return b"".join(chunks)


def _part_stream(part: BodyPartReader, sids: Sequence[str]) -> str:
    if len(sids) == 1 and sids[0] != ALL:
        return sids[0]
    sid = query_field(check_sid, part.filename or part.name or "")
    if ALL not in sids and sid not in sids:
        raise BadRequest(f"part {sid[:40]!r} names no stream of the route")
    return sid


async def get_data(request: web.Request) -> web.Response:
    """ptg's `GET /data`: the payloads concatenated, `entry-offset: [[sid, id, start], ...]`."""
    streams, token = await _caller(request)
    sids = query_field(parse_sids, request.match_info["sid"])
    count = query_field(parse_count, request.query.get("count"))
    last = request.query.get("last_entry_id", "*")
    if last == "*":
        found = await asyncio.gather(*(streams.latest(token, sid, count) for sid in sids))
    else:  # one read per stream: a read of several may return once one of them has entries
        cursors = query_field(parse_cursors, last, sids)
        found = await asyncio.gather(*(streams.read(token, {sid: cursor}, count) for sid, cursor in cursors.items()))
    entries = [entry for entries in found for entry in entries]
    offsets, payload = pack_entries(_bounded(entries))
    return web.Response(body=payload, headers={"Content-Type": OCTETS, "entry-offset": _offsets_text(offsets)})


def _bounded(entries: list[Entry]) -> list[tuple[str, str, bytes]]:
    """The entries that fit one answer (MAX_FRAME_BYTES of payloads, the offsets within one header
    line), the first of each stream first: a client reads on from the last id it got."""
    kept: list[tuple[str, str, bytes]] = []
    size = header = 0
    for entry in entries:
        size += len(entry.data)
        header += len(entry.sid) + len(entry.id) + 20
        if kept and (size > MAX_FRAME_BYTES or header > MAX_OFFSETS_HEADER):
            break
        kept.append((entry.sid, entry.id, entry.data))
    return kept


def _offsets_text(offsets: list[list]) -> str:
    return orjson.dumps(offsets).decode()


# ---- the table ----------------------------------------------------------------------------------

_AUTH = {"Authorization": "`Bearer <token>` (or the query's `token`, or the `authorization` cookie)"}
_DENIED = {401: "missing, bad or expired token", 429: "too many new tokens checked for this address"}
_STREAM = {400: "bad stream name", 404: "no such stream", **_DENIED, 503: "the stream's homes are out of reach"}
_SOCKET = {
    101: "switching to the WebSocket",
    400: "bad query, or not an Upgrade request",
    **_DENIED,
    403: "a web page of an origin not allowed",
    429: "too many data sockets (or new tokens checked) for this address",
}

STREAM_ROUTES: list[Route] = [
    Route(
        "GET", paths.STREAMS, list_streams, "every stream's name, sorted (`?info=true`: each one's info)",
        replies={200: "names, or info objects", 400: "bad query", **_DENIED}, headers=_AUTH, json_type="array",
    ),
    Route(
        "GET", paths.STREAM, stream_info,
        "a stream's info, ptg's XINFO shape (`meta` a JSON string); unlike ptg, 404 for an unknown stream",
        replies={200: "the info", **_STREAM}, headers=_AUTH,
    ),
    Route(
        "PUT", paths.STREAM, put_stream,
        "create the stream if missing and merge its meta (`?override=true`: replace it); `max_len`, `max_age` "
        "(seconds), `max_bytes` are retention, enforced",
        "a JSON object: the meta",
        {200: "the meta, as a JSON string (as ptg answers)", **_STREAM}, headers=_AUTH, json_type="string",
    ),
    Route(
        "DELETE", paths.STREAM, delete_stream, "delete the stream (`a+b`: each); an unknown one: 404, none deleted",
        replies={200: "`[1, entries removed, 1]` per stream (ptg's shape)", **_STREAM}, headers=_AUTH,
        json_type="array",
    ),
    Route(
        "POST", paths.DATA, post_data,
        "append entries: one multipart part each (ptg's `entries`, or named after its stream for `a+b`/`*`)",
        "multipart/form-data, one part per entry (each at most 1 MiB)",
        {200: "the new ids, in order", **_STREAM, 413: "an entry over 1 MiB, or over 16 MiB in all"},
        headers=_AUTH, body_media="multipart/form-data", json_type="array",
    ),
    Route(
        "GET", paths.DATA, get_data,
        "entries: `last_entry_id=*` (default) the latest `count` (1..1000) ascending; an id (or `id1+id2` for "
        "`a+b`) those after it; payloads concatenated, `entry-offset: [[sid, id, start], ...]`; an unknown "
        "stream has none",
        replies={200: "the payloads", **_STREAM}, media=OCTETS, headers=_AUTH,
    ),
    Route(
        "GET", paths.DATA_PUSH, push,
        "WebSocket, entries in. `batch=false`: each binary frame one entry. `batch=true`: a text frame of JSON END "
        "offsets (`[3,7]`, `[[sid,end],...]`, `[[sid,id,end],...]`) then one binary frame of the entries. `ack=true`: "
        "after each, a text frame of the new ids, comma-joined. A bad frame closes the socket (1003 wrong kind, "
        "1007 bad header or id, 1008 a stream not named, 1009 an entry over 1 MiB) with a reason; what was "
        "acknowledged stays",
        replies=_SOCKET, media=None, headers=_AUTH,
    ),
    Route(
        "GET", paths.DATA_PULL, pull,
        "WebSocket, entries out: frame pairs, a text `[[sid, id, start], ...]` then the payloads. `last_entry_id` "
        "(`$` default: only new; `0`: from the start; an id: every entry after it, in order, none skipped), "
        "`count` (1..1000) per stream per pair, `latest=true`: only the newest per stream, `timeout` (ms): one empty "
        "wait closes (1000), `ack=true`: the next pair waits for a client message. `group`, `consumer`, `ack_wait` "
        "(s): consumer-group delivery; each client message acks the oldest unacked pair (at most 8 out), an entry "
        "not acked within ack_wait goes to another consumer",
        replies=_SOCKET, media=None, headers=_AUTH,
    ),
]  # fmt: skip
