"""`ReplicaService`: the streams' side of a node's TCP port (`transfer.port.Port` hands it every
connection whose first frame is a streams op).

A connection starts with a signed hello (`links`): the peer's node id, signed for this node, fresh and
never seen before (`crypto.request_auth`); anything else is refused and the connection closed. Then
requests are pipelined: the replica ops ("r.*": a primary's appends and state, a claimer's promises
and fetches), only from the stream's homes (`Homes.home_of`), are answered in arrival order, so that a
primary's batches are taken in the order it sent them; user ops ("s.*": appends, reads, meta...
forwarded by any node with the user's token) run concurrently, at most `MAX_IN_FLIGHT` per connection;
a followed read (`FOLLOW`: a forwarding node's feed) is answered at each commit until its caller
unfollows it, the connection ends, or a round fails (`Streams.serve_follow` paces rounds without
entries; a rid followed already is refused); it holds one of its host's `MAX_FOLLOWS_PER_HOST`.
Reads that wait for entries hold a slot of their calling host's (`MAX_WAITING_PER_HOST`; beyond it a read
answers at once): the primary's node-wide cap on waiting reads (`home.MAX_WAITING_READERS`) was filled by
one hostile node, and every honest long poll then returned empty at once. Every answer waits for the
peer to take what was sent before (`writer.drain`), one answer at a time per connection, so a peer that
pipelines requests and never reads the answers stops being read, rather than filling this node's memory.
Bad frames are answered with an error and counted; a malformed request gets an error and the
connection keeps serving.
"""

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.crypto.request_auth import ReplayGuard, RequestAuthError, verify_request
from dhtmesh.node.stats import Counters, ErrorLog
from dhtmesh.node.streams.errors import EntryTooLarge, StreamError, StreamUnavailable, UnknownStream
from dhtmesh.node.streams.feeds import MAX_FEEDS
from dhtmesh.node.streams.home import MAX_WAITING_READERS, Homes
from dhtmesh.node.streams.wire import FOLLOW, HELLO, HELLO_METHOD, HELLO_PATH, UNFOLLOW, answer, read_body_of
from dhtmesh.node.tasks import TaskSet
from dhtmesh.node.transfer.framing import FramingError, read_header
from dhtmesh.node.wire.ratelimit import Full, RequestLimiter, Slots

MAX_IN_FLIGHT = 256  # user requests one connection may have waiting (long reads included)
IDLE_TIMEOUT = 300.0  # seconds a connection may stay silent
BODY_TIMEOUT = 30.0  # seconds for a request's body once its header came: 16 MiB at 550 KiB/s
BIG_BODY = 1024 * 1024  # bytes over which a body being read takes one of its host's slots
BIG_BODIES_PER_HOST = 4  # bodies over BIG_BODY read at once from one host (a primary sends one batch at a time)
BIG_BODIES = 32  # and in all: 32 x 16 MiB at most
MAX_WAITING_PER_HOST = 128  # waiting reads from one host
# Followed reads: a forwarding node has at most MAX_FEEDS feeds, one follow each, so its follows are never
# refused, whoever its users are (sharing the waiting reads' 128, one user's followed streams ended
# another's long polls at once); they do not count against the primary's waiting readers either.
MAX_FOLLOWS_PER_HOST = MAX_FEEDS
MAX_FOLLOWS = 4 * MAX_FEEDS
# waiting reads from other nodes in all: this node's own readers keep the rest of the primary's cap
MAX_WAITING_REMOTE = MAX_WAITING_READERS * 3 // 4
UserOp = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
FollowOp = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]


class ReplicaService:
    def __init__(
        self, identity: Identity, homes: Homes, user_op: UserOp, follow_op: FollowOp, counters: Counters
    ) -> None:
        self._identity = identity
        self._homes = homes
        self._user_op = user_op
        self._follow_op = follow_op
        self._counters = counters
        self._errors = ErrorLog(counters, "stream_port_internal_errors")
        self._guard = ReplayGuard()
        self._requests = RequestLimiter(total_rate=50_000.0, per_peer_rate=20_000.0)
        self._waits = Slots("waiting reads", MAX_WAITING_REMOTE, MAX_WAITING_PER_HOST)
        self._follows = Slots("followed reads", MAX_FOLLOWS, MAX_FOLLOWS_PER_HOST)
        self._big_bodies = Slots("large requests", BIG_BODIES, BIG_BODIES_PER_HOST)
        self._replica_ops: dict[str, Callable[[bytes, dict], Awaitable[dict]]] = {
            "r.append": homes.on_append,
            "r.state": homes.on_state,
            "r.promise": homes.on_promise,
            "r.prevote": homes.on_prevote,
            "r.position": homes.on_position,
            "r.fetch": homes.on_fetch,
        }

    async def serve(
        self, header: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> None:
        """Serve one connection whose first header (`header`) the port read."""
        tasks = TaskSet(self._counters)
        try:
            peer = self._hello(header)
            writer.write(answer(0, {"ok": True}))
            await self._requests_of(peer, reader, writer, host, tasks)
        except _Refused as refusal:
            self._refuse(refusal.counter)
            writer.write(
                answer(
                    header.get("rid", 0) if isinstance(header.get("rid"), int) else 0,
                    {"err": "bad", "msg": str(refusal)},
                )
            )
        except FramingError as error:
            self._refuse("stream_port_bad_frames")
            with contextlib.suppress(OSError):
                writer.write(answer(0, {"err": "bad", "msg": str(error)}))
        finally:
            await tasks.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.drain()
            writer.close()

    def _hello(self, header: dict[str, Any]) -> bytes:
        """The calling node's id, from the hello's header alone: a hello that states a body is refused
        unread (a stranger's body of up to 16 MiB, never sent, held the connection for ever)."""
        auth = header.get("auth")
        if header.get("op") != HELLO:
            raise _Refused("a connection starts with a signed hello", "stream_port_no_hello")
        if header.get("size", 0) != 0:
            raise _Refused("a hello has no body", "stream_port_bad_hellos")
        if not (isinstance(auth, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in auth.items())):
            raise _Refused("auth must be a map of the signed request's headers", "stream_port_bad_signatures")
        try:
            key = verify_request(auth, HELLO_METHOD, HELLO_PATH, b"", self._identity.node_id, self._guard)
        except RequestAuthError as error:
            raise _Refused(f"bad signature: {error}", "stream_port_bad_signatures") from error
        return node_id_from_public_key(key)

    async def _requests_of(
        self, peer: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, tasks: TaskSet
    ) -> None:
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        follows: dict[int, asyncio.Task] = {}
        sending = asyncio.Lock()  # one answer written and drained at a time (see `_sent`)
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    header = await read_header(reader)
            except TimeoutError:
                self._counters.add("stream_port_idle_closed")
                return  # silent for too long: the descriptor goes to someone else
            except FramingError as error:
                if not isinstance(error.__cause__, asyncio.IncompleteReadError) or error.__cause__.partial:
                    raise
                return  # the peer closed the connection between frames
            body = await self._body(header, reader, host)
            rid, op = header.get("rid"), header.get("op")
            if not isinstance(rid, int) or not isinstance(op, str):
                self._refuse("stream_port_bad_requests")
                reply = answer(0, {"err": "bad", "msg": "a request has an op and an integer rid"})
            elif not self._requests.allow_host(host):
                self._refuse("stream_port_rate_limited")
                reply = answer(rid, {"err": "unavailable", "msg": "too many requests"})
            elif (handler := self._replica_ops.get(op)) is not None:
                reply = answer(rid, await self._run(functools.partial(handler, peer, body)))
            elif op == FOLLOW and rid in follows:  # the first one could no longer be unfollowed
                self._refuse("stream_port_bad_requests")
                reply = answer(rid, {"err": "bad", "msg": f"request {rid} is followed already"})
            elif op == FOLLOW:  # bounded by its own slots (`_follows`), not the connection's in-flight ones
                follows[rid] = followed = tasks.spawn(self._follow(rid, body, writer, sending, host))
                # On its end, even when unfollowed before it ran (then no `finally` of its own runs).
                followed.add_done_callback(functools.partial(_followed, follows, rid))
                continue
            elif op == UNFOLLOW:  # not answered: the caller waits for nothing
                followed = follows.pop(body.get("rid"), None) if isinstance(body.get("rid"), int) else None
                if followed is not None:
                    followed.cancel()
                continue
            elif op.startswith("s.") and op != HELLO:
                await in_flight.acquire()
                tasks.spawn(self._user(op, rid, body, writer, sending, in_flight, host))
                continue
            else:
                self._refuse("stream_port_unknown_ops")
                reply = answer(rid, {"err": "bad", "msg": f"unknown op {op!r}"})
            if not await _sent(writer, sending, reply):
                return  # the peer went away

    async def _body(self, header: dict[str, Any], reader: asyncio.StreamReader, host: str) -> dict[str, Any]:
        """The request's body, read within `BODY_TIMEOUT`; one over `BIG_BODY` bytes needs a slot of the
        calling host's (`_big_bodies`), so that a peer announcing 16 MiB and sending it slowly from many
        connections holds a few bodies in memory, not one per connection."""
        size = header.get("size", 0)
        big = isinstance(size, int) and size > BIG_BODY
        try:
            with self._big_bodies.held(host) if big else contextlib.nullcontext():
                async with asyncio.timeout(BODY_TIMEOUT):
                    return await read_body_of(reader, header)
        except Full as error:
            self._refuse("stream_port_bodies_refused")
            raise FramingError("too many large requests being sent from your address") from error
        except TimeoutError as error:
            self._refuse("stream_port_timeouts")
            raise FramingError("a request's body did not arrive in time") from error

    async def _user(
        self,
        op: str,
        rid: int,
        body: dict[str, Any],
        writer: asyncio.StreamWriter,
        sending: asyncio.Lock,
        in_flight: asyncio.Semaphore,
        host: str,
    ) -> None:
        waits = _waits(body)
        if waits:
            try:
                self._waits.take(host)
            except Full:
                self._counters.add("stream_port_waits_over_cap")
                body, waits = {**body, "wait": 0.0}, False
        try:
            result = await self._run(functools.partial(self._user_op, op, body))
            await _sent(writer, sending, answer(rid, result))  # its slot is free once the peer took the answer
        finally:
            in_flight.release()
            if waits:
                self._waits.give(host)

    async def _follow(
        self, rid: int, body: dict[str, Any], writer: asyncio.StreamWriter, sending: asyncio.Lock, host: str
    ) -> None:
        """A followed read's answers, one per change, until it is unfollowed, a round fails (its error is
        the last answer) or the peer stops taking them; it holds a followed read's slot of its host's."""
        try:
            self._follows.take(host)
        except Full:
            self._counters.add("stream_port_follows_over_cap")
            refusal = {"err": "unavailable", "msg": "too many followed reads from you"}
            await _sent(writer, sending, answer(rid, refusal))
            return
        try:
            async with contextlib.aclosing(self._follow_op(body)) as answers:
                async for reply in answers:
                    if not await _sent(writer, sending, answer(rid, reply)):
                        return
        except Exception as error:
            await _sent(writer, sending, answer(rid, self._failed(error)))
        finally:
            self._follows.give(host)

    async def _run(self, call: Callable[[], Awaitable[dict]]) -> dict:
        """The call's answer; a refusal or our own failure as an error answer, counted."""
        try:
            return await call()
        except Exception as error:
            return self._failed(error)

    def _failed(self, error: Exception) -> dict:
        """A refusal (a malformed or refused request) or our own failure, as an error answer, counted."""
        if isinstance(error, StreamError | KeyError | TypeError | ValueError):
            self._refuse("stream_port_refused")
            return {"err": error_kind(error), "msg": str(error)}
        self._errors.internal(error, "the streams port")
        return {"err": "unavailable", "msg": "internal error"}

    def _refuse(self, counter: str) -> None:
        self._counters.add("stream_port_refusals")
        self._counters.add(counter)


def _followed(follows: dict[int, asyncio.Task], rid: int, task: asyncio.Task) -> None:
    """A followed read ended: its rid is no longer its."""
    if follows.get(rid) is task:
        del follows[rid]


def _waits(body: dict[str, Any]) -> bool:
    """Whether a user op asks to wait for entries."""
    wait = body.get("wait")
    return isinstance(wait, int | float) and wait > 0


async def _sent(writer: asyncio.StreamWriter, sending: asyncio.Lock, data: bytes) -> bool:
    """Send `data` and wait until the peer took enough of what was sent; False if the connection ended.
    One answer at a time per connection (`sending`): concurrent answers (user ops, follows) each wrote
    theirs before any drained, so a peer pipelining reads of 8 MiB answers and taking none had 8 MiB per
    request buffered (2 GiB per connection); now one answer, and the rest wait their turn."""
    try:
        async with sending:
            writer.write(data)
            await writer.drain()
    except OSError:
        return False
    return True


class _Refused(Exception):
    def __init__(self, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.counter = counter


def error_kind(error: Exception) -> str:
    """The wire name of an error (the forwarding node raises the same class from it)."""
    for kind, name in ((UnknownStream, "unknown"), (EntryTooLarge, "large"), (StreamUnavailable, "unavailable")):
        if isinstance(error, kind):
            return name
    return "bad"
