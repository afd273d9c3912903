"""`Links`: this node's persistent TCP connections to other nodes' stream services (the client side).

One connection per peer, opened on first use with a signed hello (`crypto.request_auth`, bound to the
peer's node id, so the peer knows which node calls and nobody can replay it elsewhere), then shared by
every request to that peer, pipelined: each request has an id its answer carries. A followed request
(`Links.follow`) has many answers, taken until the caller stops (which tells the peer: `UNFOLLOW`). A
connection that fails fails every request waiting on it (`LinkDown`) and is opened again by the next
request.
"""

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.stats import Counters
from dhtmesh.node.streams.wire import HELLO, HELLO_METHOD, HELLO_PATH, MAX_BODY, UNFOLLOW, read_frame, request
from dhtmesh.node.tasks import TaskSet
from dhtmesh.node.transfer.framing import FramingError, frame

CONNECT_TIMEOUT = 2.0
MAX_QUEUED = 64  # answers of a followed request received and not yet taken: past it, the follow ends
MAX_QUEUED_BYTES = 2 * MAX_BODY  # and their bytes (64 answers of 16 MiB from a hostile home: 1 GiB)
Peer = tuple[bytes, str, int]


class LinkDown(Exception):
    """The peer could not be reached, or its connection was lost before it answered."""


class _Answers:
    """The answers of a followed request received and not yet taken, bounded in count and bytes; past
    either bound the follow ends (its taker gets LinkDown)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[dict[str, Any], int] | LinkDown] = asyncio.Queue()
        self._bytes = 0

    def put(self, body: dict[str, Any], size: int) -> bool:
        """False, and the follow ended, when the answer would pass a bound."""
        if self._queue.qsize() >= MAX_QUEUED or self._bytes + size > MAX_QUEUED_BYTES:
            self.end(LinkDown("answers of a followed request piled up untaken"))
            return False
        self._bytes += size
        self._queue.put_nowait((body, size))
        return True

    def end(self, error: LinkDown) -> None:
        self._queue.put_nowait(error)

    async def get(self) -> dict[str, Any]:
        item = await self._queue.get()
        if isinstance(item, LinkDown):
            raise item
        body, size = item
        self._bytes -= size
        return body


class _Link:
    def __init__(self, identity: Identity, peer: Peer, tasks: TaskSet) -> None:
        self._identity = identity
        self._peer = peer
        self._tasks = tasks
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._following: dict[int, _Answers] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._opening = asyncio.Lock()

    async def send(self, op: str, args: dict[str, Any], within: float) -> Awaitable[dict[str, Any]]:
        """Send the request now (requests sent one after another reach the peer in that order) and
        return what awaits its answer."""
        try:
            writer = await self._open()
            rid = next(self._ids)
            answered = self._waiting[rid] = asyncio.get_running_loop().create_future()
            writer.write(request(op, rid, args))
        except OSError as error:
            raise LinkDown(f"{op} to {self._peer[1]}:{self._peer[2]}: {error}") from error
        return self._answer(op, rid, answered, writer, within)

    async def follow(self, op: str, args: dict[str, Any], within: float) -> AsyncIterator[dict[str, Any]]:
        """Each answer to a followed request, as it comes; raises LinkDown when none came within `within`
        seconds, the connection was lost, or the answers piled up untaken. Closing the iterator tells
        the peer to stop."""
        try:
            writer = await self._open()
        except OSError as error:
            raise LinkDown(f"{op} to {self._peer[1]}:{self._peer[2]}: {error}") from error
        rid = next(self._ids)
        answers = self._following[rid] = _Answers()
        try:
            writer.write(request(op, rid, args))
            while True:
                try:
                    async with asyncio.timeout(within):
                        answer = await answers.get()
                except TimeoutError as error:
                    raise LinkDown(f"{op} to {self._peer[1]}:{self._peer[2]}: nothing within {within} s") from error
                yield answer
        finally:  # the peer stops answering (unless the connection is gone, which stops it too)
            self._following.pop(rid, None)
            if not writer.is_closing():
                writer.write(request(UNFOLLOW, next(self._ids), {"rid": rid}))

    def _followed(self, rid: int, body: dict[str, Any], size: int) -> bool:
        """Queue an answer to a followed request (`size`: its body's bytes); False if `rid` is none."""
        answers = self._following.get(rid)
        if answers is None:
            return False
        if not answers.put(body, size):
            del self._following[rid]
        return True

    async def _answer(
        self, op: str, rid: int, answered: asyncio.Future, writer: asyncio.StreamWriter, within: float
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(within):
                await writer.drain()
                return await answered
        except (OSError, TimeoutError) as error:
            raise LinkDown(f"{op} to {self._peer[1]}:{self._peer[2]}: {error or 'timed out'}") from error
        finally:
            self._waiting.pop(rid, None)

    async def _open(self) -> asyncio.StreamWriter:
        async with self._opening:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            node_id, host, port = self._peer
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(host, port)
                    auth = sign_request(self._identity, HELLO_METHOD, HELLO_PATH, b"", node_id)
                    writer.write(frame({"op": HELLO, "rid": 0, "auth": auth}))
                    _, body = await read_frame(reader)
            except (OSError, TimeoutError, FramingError) as error:
                raise LinkDown(f"cannot reach {host}:{port}: {error or 'timed out'}") from error
            if "ok" not in body:
                writer.close()
                raise LinkDown(f"{host}:{port} refused this node: {body.get('msg')}")
            self._writer = writer
            self._tasks.spawn(self._read(reader, writer))
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header, body = await read_frame(reader)
                rid = header.get("rid", -1)
                if self._followed(rid, body, header.get("size", 0)):
                    continue
                waiting = self._waiting.get(rid)
                if waiting is not None and not waiting.done():
                    waiting.set_result(body)
        except (FramingError, OSError):
            pass  # the connection ended: every request still waiting fails below
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            lost = f"connection to {self._peer[1]}:{self._peer[2]} lost"
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(LinkDown(lost))
            for answers in self._following.values():
                answers.end(LinkDown(lost))
            self._following.clear()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Links:
    def __init__(self, identity: Identity, counters: Counters) -> None:
        self._identity = identity
        self._links: dict[Peer, _Link] = {}
        self._tasks = TaskSet(counters)

    async def request(self, peer: Peer, op: str, args: dict[str, Any], within: float = 5.0) -> dict[str, Any]:
        """The peer's answer body (`ok` or `err`); raises LinkDown."""
        return await (await self.send(peer, op, args, within))

    async def send(self, peer: Peer, op: str, args: dict[str, Any], within: float = 5.0) -> Awaitable[dict[str, Any]]:
        """Send a request now; returns what awaits its answer (which raises LinkDown)."""
        return await self._link(peer).send(op, args, within)

    def follow(self, peer: Peer, op: str, args: dict[str, Any], within: float) -> AsyncIterator[dict[str, Any]]:
        """The answers to a followed request (see `_Link.follow`); close the iterator to stop."""
        return self._link(peer).follow(op, args, within)

    def _link(self, peer: Peer) -> _Link:
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link(self._identity, peer, self._tasks)
        return link

    def drop(self, peer: Peer) -> None:
        """Close the connection to `peer` (a test's way of cutting it; the next request opens another)."""
        link = self._links.pop(peer, None)
        if link is not None:
            link.close()

    async def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        with contextlib.suppress(Exception):
            await self._tasks.close()
