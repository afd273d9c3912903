"""`Links`: this node's persistent TCP connections to other nodes' stream services (the client side).

One connection per peer, opened on first use with a signed hello (`crypto.request_auth`, bound to the
peer's node id, so the peer knows which node calls and nobody can replay it elsewhere), then shared by
every request to that peer, pipelined: each request has an id its answer carries. A connection that
fails fails every request waiting on it (`LinkDown`) and is opened again by the next request.
"""

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable
from typing import Any

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.stats import Counters
from dhtmesh.node.streams.wire import HELLO, HELLO_METHOD, HELLO_PATH, read_frame, request
from dhtmesh.node.tasks import TaskSet
from dhtmesh.node.transfer.framing import FramingError, frame

CONNECT_TIMEOUT = 2.0
Peer = tuple[bytes, str, int]


class LinkDown(Exception):
    """The peer could not be reached, or its connection was lost before it answered."""


class _Link:
    def __init__(self, identity: Identity, peer: Peer, tasks: TaskSet) -> None:
        self._identity = identity
        self._peer = peer
        self._tasks = tasks
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
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
                waiting = self._waiting.get(header.get("rid", -1))
                if waiting is not None and not waiting.done():
                    waiting.set_result(body)
        except (FramingError, OSError):
            pass  # the connection ended: every request still waiting fails below
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(LinkDown(f"connection to {self._peer[1]}:{self._peer[2]} lost"))

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
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link(self._identity, peer, self._tasks)
        return await link.send(op, args, within)

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
