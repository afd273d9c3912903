"""ptg-api-server's two data WebSockets: `/data/{sid}/push` (entries in) and `/data/{sid}/pull` (entries
out), framed as `api.stream_frames` says.

Every check runs before the handshake, so a refusal is a plain HTTP error (`{"err"}`): the token (401),
the page's `Origin` (403: a browser sends the `authorization` cookie to a socket any page of the same site
opens, so a foreign page could otherwise read or write a user's streams), the query (400), a slot of
the client's (429). After the handshake a bad frame closes the socket with a close code and a reason;
whatever was acknowledged before it stays.

Push pipelines its appends (up to `PUSH_IN_FLIGHT` under way, given their ids in order by the stream's
primary: `streams.lanes`) and commits in groups: while the pipeline is full the socket reads on (up to
`READ_AHEAD_BYTES` not yet appended), and what it read goes to the streams as the next append (one
`Streams.append` per stream), each frame or batch acknowledged on its own, in order; a fast writer is
slowed by TCP rather than queued in memory. Pull sends
a frame pair only once the last was written (`send_bytes` is awaited), and with `ack`, or in a consumer
group, only once the client acknowledged (a group has at most `GROUP_WINDOW` frame pairs
unacknowledged: its `MaxAckPending`). Heartbeats end a half-open socket.
"""

import asyncio
import contextlib
import itertools
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import WSMessage, WSMsgType, web

from dhtmesh.api.stream_frames import (
    ALL,
    INVALID,
    MAX_BATCH_ENTRIES,
    MAX_FRAME_BYTES,
    NORMAL,
    POLICY,
    TOO_BIG,
    UNAVAILABLE,
    UNSUPPORTED,
    FrameError,
    PushEntry,
    by_stream,
    check_entry,
    close_reason,
    frames,
    pack_entries,
    parse_count,
    parse_cursors,
    parse_flag,
    parse_push_header,
    parse_sids,
    split_batch,
)
from dhtmesh.node.accounts.errors import AccountError
from dhtmesh.node.streams.errors import BadStreamRequest, EntryTooLarge, StreamError, StreamUnavailable
from dhtmesh.node.streams.service import Entry, Streams
from dhtmesh.node.wire.ratelimit import Slots
from dhtmesh.proxy.clients import client_slot
from dhtmesh.proxy.errors import BadRequest
from dhtmesh.proxy.origins import refuse_foreign
from dhtmesh.proxy.route import NODE, STREAMS
from dhtmesh.proxy.token_routes import authenticated, token_of

STREAM_SOCKETS = web.AppKey("stream_sockets", Slots)  # data sockets held at once, per client host and in all
SOCKETS_PER_CLIENT = 16
SOCKETS_IN_ALL = 64
MAX_MESSAGE = MAX_FRAME_BYTES + 64 * 1024  # a batch of 16 MiB of entries, or its header
HEARTBEAT = 30.0  # seconds between pings; a socket that misses a pong is closed
WAIT = 30.0  # seconds one blocking read waits when the client gave no `timeout`
MAX_TIMEOUT_MS = 300_000
DEFAULT_ACK_WAIT = 30.0
MAX_ACK_WAIT = 3600.0
PUSH_IN_FLIGHT = 8  # appends a push socket has under way at once (each up to a batch)
READ_AHEAD_BYTES = 4 * 1024 * 1024  # entries a push socket holds read, not yet appended (a batch may pass it)
GROUP_WINDOW = 8  # frame pairs a consumer-group socket has unacknowledged at most
BAD_FRAMES = "stream_bad_frames"  # sockets closed for a frame that breaks the framing
SOCKET_REFUSALS = "stream_socket_refusals"  # sockets closed for a refusal of the streams service
REFUSED_SOCKETS = "http_stream_sockets_refused"
T = TypeVar("T")


def sockets_slots() -> Slots:
    """The bound on data sockets, for the app under `STREAM_SOCKETS`."""
    return Slots("data sockets", SOCKETS_IN_ALL, SOCKETS_PER_CLIENT)


# ---- before the handshake -----------------------------------------------------------------------


async def _admitted(request: web.Request) -> str:
    """The caller's token, once it is valid and the page (if any) may use it; refusals are HTTP errors."""
    await authenticated(request)
    refuse_foreign(request, "open a data socket: the browser would send it the user's cookie")
    token = token_of(request)
    assert token is not None  # authenticated() refused a request without one
    return token


def query_field(parse: Callable[..., T], *args: object) -> T:
    """A query field parsed; a framing rule it breaks is a 400."""
    try:
        return parse(*args)
    except FrameError as error:
        raise BadRequest(str(error)) from error


async def _open(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=HEARTBEAT)
    if not socket.can_prepare(request).ok:
        raise BadRequest("this route is a WebSocket: send an Upgrade request")
    await socket.prepare(request)
    return socket


async def _refuse(request: web.Request, socket: web.WebSocketResponse, error: Exception) -> None:
    """Close the socket over `error` (a bad frame, or the service's refusal), with its code and reason."""
    if isinstance(error, FrameError):
        code, counter = error.code, BAD_FRAMES
    else:
        code, counter = _close_code(error), SOCKET_REFUSALS
    request.app[NODE].counters.add(counter)
    await socket.close(code=code, message=close_reason(str(error)).encode())


def _close_code(error: Exception) -> int:
    """The close code of a service's refusal after the handshake."""
    if isinstance(error, EntryTooLarge):
        return TOO_BIG
    if isinstance(error, StreamUnavailable):
        return UNAVAILABLE
    if isinstance(error, BadStreamRequest):
        return INVALID
    return POLICY  # a token that expired or was revoked, a stream deleted under the socket


# ---- push ---------------------------------------------------------------------------------------


@dataclass
class _Push:
    streams: Streams
    token: str
    sids: list[str]
    batch: bool
    ack: bool
    lanes: dict[str, tuple[bytes, Iterator[int]]] = field(default_factory=dict)
    under_way: int = 0  # appends sent and not yet answered

    def lane(self, sid: str) -> tuple[bytes, int]:
        """The next place in this socket's lane of stream `sid` (a lane per stream: the streams' primaries
        differ)."""
        if sid not in self.lanes:
            self.lanes[sid] = (secrets.token_bytes(16), itertools.count())
        lane_id, places = self.lanes[sid]
        return lane_id, next(places)


async def push(request: web.Request) -> web.StreamResponse:
    """`WS /data/{sid}/push?batch=&ack=`: entries in, one binary frame each, or batches."""
    token = await _admitted(request)
    batch = query_field(parse_flag, request.query.get("batch"))
    sids = query_field(parse_sids, request.match_info["sid"], True)
    if not batch and (len(sids) != 1 or ALL in sids):
        raise BadRequest("several streams (a+b, *) are pushed in batches: batch=true")
    state = _Push(request.app[STREAMS], token, sids, batch, query_field(parse_flag, request.query.get("ack")))
    with client_slot(request.app[STREAM_SOCKETS], request, REFUSED_SOCKETS):
        socket = await _open(request)
        try:
            # Shielded: the proxy cancels a handler whose client has gone (`handler_cancellation`, which
            # ends listen streams), and a client closing right after its last frames goes before they are
            # appended; what the socket took in is appended all the same.
            await asyncio.shield(_push_frames(socket, state))
        except* ConnectionError:
            pass  # the client went: what it was acknowledged stays, a batch it was not is its to send again
        except* (FrameError, StreamError, AccountError) as errors:
            await _refuse(request, socket, errors.exceptions[0])  # type: ignore[arg-type]
        return socket


class _ReadAhead:
    """The frames a push socket has read and not yet appended (waiting, or in an append under way), bounded
    in bytes (`READ_AHEAD_BYTES`), and
    how reading ended: None when the client closed, or the error a bad frame raised, which is raised
    only once every unit read before it was appended (and acknowledged)."""

    def __init__(self) -> None:
        self.units: deque[list[PushEntry]] = deque()
        self.size = 0
        self.end: FrameError | None = None
        self.ended = False
        self.changed = asyncio.Event()

    def add(self, unit: list[PushEntry]) -> None:
        self.units.append(unit)
        self.size += sum(len(entry.data) for entry in unit)
        self.changed.set()

    def finish(self, error: FrameError | None) -> None:
        self.end, self.ended = error, True
        self.changed.set()

    def take(self) -> list[list[PushEntry]]:
        """The units waiting, oldest first, as many as one append takes (at least one)."""
        taken = [self.units.popleft()]
        count, size = len(taken[0]), sum(len(entry.data) for entry in taken[0])
        while self.units and count + len(self.units[0]) <= MAX_BATCH_ENTRIES:
            unit_size = sum(len(entry.data) for entry in self.units[0])
            if size + unit_size > MAX_FRAME_BYTES:
                break
            taken.append(self.units.popleft())
            count, size = count + len(taken[-1]), size + unit_size
        return taken

    def appended(self, units: list[list[PushEntry]]) -> None:
        """`units` are appended: their bytes no longer count against `READ_AHEAD_BYTES`."""
        self.size -= sum(len(entry.data) for unit in units for entry in unit)
        self.changed.set()

    async def wait(self) -> None:
        self.changed.clear()
        await self.changed.wait()


async def _push_frames(socket: web.WebSocketResponse, state: _Push) -> None:
    """Pipelined group commit: up to `PUSH_IN_FLIGHT` appends are under way at once, numbered in the
    socket's lane so that the primary gives their ids in order; frames are read meanwhile, and every unit
    (entry or batch) read while the pipeline is full goes to the streams as one append. Each unit is
    acknowledged on its own, in order. So a client sending entry by entry waits for no earlier entry's
    round trip, costs the homes one transaction per append, and reading stops at `READ_AHEAD_BYTES`
    waiting, so a fast writer is still slowed by TCP."""
    ahead = _ReadAhead()
    async with asyncio.TaskGroup() as tasks:
        reader = tasks.create_task(_read_ahead(socket, state, ahead))
        try:
            await _append_ahead(socket, state, ahead, tasks)
        finally:
            reader.cancel()


async def _append_ahead(
    socket: web.WebSocketResponse, state: _Push, ahead: _ReadAhead, tasks: asyncio.TaskGroup
) -> None:
    """Append what the reader read, in groups, until it ended; then, once all is acknowledged, raise the
    bad frame that ended it. An append that fails ends the socket (its lane fails every later one)."""
    under_way: asyncio.Queue[_Appending | None] = asyncio.Queue()
    room = asyncio.Semaphore(PUSH_IN_FLIGHT)
    acknowledging = tasks.create_task(_acknowledge(socket, state, ahead, under_way, room))
    while True:
        await room.acquire()
        while not ahead.units and not ahead.ended:
            await ahead.wait()
        if not ahead.units:
            break
        units = ahead.take()
        entries = [entry for unit in units for entry in unit]
        appending = tasks.create_task(_append(state, entries, _planned(state, entries)))
        state.under_way += 1
        under_way.put_nowait(_Appending(units, appending))
    under_way.put_nowait(None)
    await acknowledging
    if ahead.end is not None:
        raise ahead.end


@dataclass(frozen=True)
class _Appending:
    units: list[list[PushEntry]]
    ids: asyncio.Task[list[str]]


async def _acknowledge(
    socket: web.WebSocketResponse,
    state: _Push,
    ahead: _ReadAhead,
    under_way: asyncio.Queue,
    room: asyncio.Semaphore,
) -> None:
    """Each unit's ids to the client (with `ack`), in the order the units came, as their appends end."""
    while (appending := await under_way.get()) is not None:
        ids = await appending.ids
        state.under_way -= 1
        room.release()
        ahead.appended(appending.units)
        if not state.ack:
            continue
        for unit in appending.units:
            unit_ids, ids = ids[: len(unit)], ids[len(unit) :]
            with contextlib.suppress(ConnectionError):  # the client went: what it sent is appended still
                await socket.send_str(",".join(unit_ids))


async def _read_ahead(socket: web.WebSocketResponse, state: _Push, ahead: _ReadAhead) -> None:
    try:
        while (unit := await _next_entries(socket, state)) is not None:
            ahead.add(unit)
            while ahead.size >= READ_AHEAD_BYTES:
                await ahead.wait()
    except FrameError as error:
        ahead.finish(error)
        return
    ahead.finish(None)


async def _next_entries(socket: web.WebSocketResponse, state: _Push) -> list[PushEntry] | None:
    """The next entry, or batch, the client sent; None once it closed."""
    message = await socket.receive()
    if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None
    if not state.batch:
        return [PushEntry(state.sids[0], None, check_entry(_binary(message)))]
    if message.type != WSMsgType.TEXT:
        raise FrameError("a batch begins with a text frame: its JSON end offsets", UNSUPPORTED)
    header = parse_push_header(message.data, state.sids)
    data = await socket.receive()
    if data.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None  # a batch cut short was never acknowledged: nothing is lost that the client counts on
    return split_batch(header, _binary(data))


def _binary(message: WSMessage) -> bytes:
    if message.type != WSMsgType.BINARY:
        raise FrameError("entries are binary frames", UNSUPPORTED)
    return message.data


def _planned(state: _Push, entries: Sequence[PushEntry]) -> list[tuple[str, list[int], tuple[bytes, int]]]:
    """Each stream's part of a batch: its entries' positions, and its place in the stream's lane on this
    socket (taken here, as batches are read, so that places follow the client's order). With nothing
    under way, every stream starts a new lane: a socket idle for long does not count on its old lanes,
    which the primary may have forgotten meanwhile."""
    if state.under_way == 0:
        state.lanes.clear()
    if len(state.sids) == 1 and ALL not in state.sids:  # one stream: the batch as it is
        groups = {state.sids[0]: list(range(len(entries)))}
    else:
        groups = by_stream(entries)
    return [(sid, positions, state.lane(sid)) for sid, positions in groups.items()]


async def _append(
    state: _Push, entries: Sequence[PushEntry], plan: list[tuple[str, list[int], tuple[bytes, int]]]
) -> list[str]:
    """One append per stream of the batch (concurrently), each in its lane; the new ids in the batch's
    order."""
    appended = await asyncio.gather(
        *(
            state.streams.append(state.token, sid, [(entries[i].data, entries[i].id) for i in positions], lane)
            for sid, positions, lane in plan
        )
    )
    ids = [""] * len(entries)
    for (_, positions, _), new_ids in zip(plan, appended, strict=True):
        for position, new_id in zip(positions, new_ids, strict=True):
            ids[position] = new_id
    return ids


# ---- pull ---------------------------------------------------------------------------------------


@dataclass
class _Pull:
    streams: Streams
    token: str
    sids: list[str]
    cursors: dict[str, str]
    count: int
    latest: bool
    timeout: float | None  # seconds; None: wait for ever
    ack: bool
    group: str | None
    consumer: str
    ack_wait: float


@dataclass
class _Window:
    """Frame pairs sent and not yet acknowledged by a client message (each: its entries' ids, for a
    group's ack); the sender waits while `limit` are out."""

    limit: int
    out: deque[list[str]] = field(default_factory=deque)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_room(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.out) < self.limit)

    async def sent(self, ids: list[str]) -> None:
        async with self.changed:
            self.out.append(ids)

    async def acknowledged(self) -> list[str] | None:
        """The ids of the oldest frame pair out, now acknowledged; None if none was out."""
        async with self.changed:
            if not self.out:
                return None
            ids = self.out.popleft()
            self.changed.notify_all()
            return ids


def _pull_state(request: web.Request, token: str) -> _Pull:
    query = request.query
    sids = query_field(parse_sids, request.match_info["sid"])
    group = query.get("group") or None
    if group is not None and len(sids) != 1:
        raise BadRequest("a consumer group reads one stream")
    timeout = query.get("timeout")
    if timeout is not None and not (timeout.isdigit() and 1 <= int(timeout) <= MAX_TIMEOUT_MS):
        raise BadRequest(f"timeout is in ms, 1 to {MAX_TIMEOUT_MS}")
    ack_wait = query.get("ack_wait", str(DEFAULT_ACK_WAIT))
    try:
        ack_wait_seconds = float(ack_wait)
    except ValueError as error:
        raise BadRequest("ack_wait is in seconds") from error
    if not 0.1 <= ack_wait_seconds <= MAX_ACK_WAIT:
        raise BadRequest(f"ack_wait is 0.1 to {MAX_ACK_WAIT} seconds")
    return _Pull(
        streams=request.app[STREAMS],
        token=token,
        sids=sids,
        cursors=query_field(parse_cursors, query.get("last_entry_id", "$"), sids),
        count=query_field(parse_count, query.get("count")),
        latest=query_field(parse_flag, query.get("latest")),
        timeout=int(timeout) / 1000 if timeout is not None else None,
        ack=query_field(parse_flag, query.get("ack")),
        group=group,
        consumer=query.get("consumer") or f"{request.remote}-{secrets.token_hex(4)}",
        ack_wait=ack_wait_seconds,
    )


async def pull(request: web.Request) -> web.StreamResponse:
    """`WS /data/{sid}/pull`: entries out, as frame pairs, from `last_entry_id` on (see STREAM_ROUTES)."""
    token = await _admitted(request)
    state = _pull_state(request, token)
    with client_slot(request.app[STREAM_SOCKETS], request, REFUSED_SOCKETS):
        await _resolve_new_only(state)  # before the handshake: `$` is what comes after the socket opened
        socket = await _open(request)
        window = _Window(1 if state.ack else GROUP_WINDOW if state.group else 0)
        try:
            async with asyncio.TaskGroup() as tasks:
                listener = tasks.create_task(_client_messages(socket, state, window))
                sender = tasks.create_task(_deliver(socket, state, window))
                await asyncio.wait((listener, sender), return_when=asyncio.FIRST_COMPLETED)
                listener.cancel()
                sender.cancel()
        except* (StreamError, AccountError) as errors:
            await _refuse(request, socket, errors.exceptions[0])  # type: ignore[arg-type]
        return socket


async def _client_messages(socket: web.WebSocketResponse, state: _Pull, window: _Window) -> None:
    """Reads what the client sends until it closes: each message acknowledges the oldest frame pair
    out (in a group, its entries are acked to the stream); one with nothing out is ignored, as ptg does."""
    async for message in socket:
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        ids = await window.acknowledged()
        if ids and state.group is not None:
            await state.streams.group_ack(state.token, state.sids[0], state.group, ids)


async def _deliver(socket: web.WebSocketResponse, state: _Pull, window: _Window) -> None:
    """Frame pairs until the client goes, or (with `timeout`) one wait finds nothing: then close 1000."""
    try:
        await _frame_pairs(socket, state, window)
    except ConnectionError:
        return  # the client went: a resuming client says where it was (last_entry_id)


async def _frame_pairs(socket: web.WebSocketResponse, state: _Pull, window: _Window) -> None:
    while not socket.closed:
        if window.limit:
            await window.wait_room()
        entries = await _next_batch(state)
        if not entries:
            if state.timeout is not None:
                await socket.close(code=NORMAL, message=b"no entries within the timeout")
                return
            continue
        for run in frames([(entry.sid, entry.id, entry.data) for entry in entries]):
            if window.limit:
                await window.wait_room()
            offsets, payload = pack_entries(run)
            await socket.send_json(offsets)
            await socket.send_bytes(payload)
            if window.limit:
                await window.sent([entry_id for _, entry_id, _ in run])
            for sid, entry_id, _ in run:
                state.cursors[sid] = entry_id


async def _resolve_new_only(state: _Pull) -> None:
    """`$` becomes each stream's last id now, so that reads after an empty wait miss nothing appended
    between two reads (ptg uses the clock, which skews between nodes). A stream with no entries (or not
    found yet from this node) is read from its start: a duplicate rather than a loss."""
    for sid, cursor in state.cursors.items():
        if cursor == "$":
            last = await state.streams.latest(state.token, sid, 1)
            state.cursors[sid] = last[-1].id if last else "0"


async def _next_batch(state: _Pull) -> list[Entry]:
    wait = state.timeout if state.timeout is not None else WAIT
    if state.group is not None:
        return await _group_batch(state, state.group, wait)
    entries = await state.streams.read(state.token, dict(state.cursors), state.count, wait)
    if not state.latest or not entries:
        return entries
    return await _newest(state, {entry.sid for entry in entries})


async def _group_batch(state: _Pull, group: str, wait: float) -> list[Entry]:
    """The group's next entries for this consumer, waiting up to `wait` s; asked again at least every
    `ack_wait` s, since a blocked read wakes for new entries, not for an unacked one falling due."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        step = max(min(state.ack_wait, deadline - loop.time()), 0.0)
        entries = await state.streams.group_read(
            state.token, state.sids[0], group, state.consumer, state.count, step, state.ack_wait
        )
        if entries or loop.time() >= deadline:
            return entries


async def _newest(state: _Pull, sids: set[str]) -> list[Entry]:
    """`latest=true`: per stream with new entries, only the newest `count` (ptg's latest mode, asked
    for: it skips entries)."""
    newest = await asyncio.gather(*(state.streams.latest(state.token, sid, state.count) for sid in sorted(sids)))
    return [entry for entries in newest for entry in entries if _after(entry.id, state.cursors[entry.sid])]


def _after(entry_id: str, cursor: str) -> bool:
    if cursor == "0":
        return True
    return _id_key(entry_id) > _id_key(cursor)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
