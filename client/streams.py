"""`StreamClient`: ptg-api-server's data-stream API of a dhtmesh node (login, streams, data over REST and
the two WebSockets), over one aiohttp session; framed as ptgctl frames (`api.stream_frames`).

An HTTP error is an `ApiError`; a socket the node closed with an error code is a `SocketClosed` carrying
the code and the node's reason (1000, the end of a pull's `timeout`, is no error: `Puller.recv` gives []).
"""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from dhtmesh.api import paths
from dhtmesh.api.stream_frames import MAX_FRAME_BYTES, FrameError, unpack_entries
from dhtmesh.client.errors import ApiError, BadAnswer, ClientError, Unreachable
from dhtmesh.client.transport import STREAM_TIMEOUT, Transport

MAX_HEADER = 64 * 1024  # the node's `entry-offset` is at most 60,000 bytes
MAX_MESSAGE = MAX_FRAME_BYTES + 64 * 1024
PulledEntry = tuple[str, str, bytes]  # (sid, id, data)


class SocketClosed(ClientError):
    """The node closed a data socket: `code` (RFC 6455) and its `reason`."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"socket closed ({code}): {reason}")
        self.code = code
        self.reason = reason


def stream_path(template: str, sid: str) -> str:
    """A stream route's path; `+` (ptg's `a+b`) and `*` are kept as they are, the rest escaped."""
    return template.format(sid=quote(sid, safe="+*"))


class _Session(Transport):
    """The client's transport, taking answers with an `entry-offset` header over aiohttp's 8 KiB."""

    def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=STREAM_TIMEOUT, max_field_size=MAX_HEADER)


class Pusher:
    """One push socket: `send` a batch (or, not batched, each entry as a frame); with `ack`, the new ids."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse, batch: bool, ack: bool) -> None:
        self.socket = socket
        self.batch = batch
        self.ack = ack

    async def send(self, entries: list[bytes], sids: list[str] | None = None) -> list[str] | None:
        """Appends `entries` (of `sids`, one each, for a multi-stream socket); with `ack`, their ids."""
        if not self.batch:
            ids = []
            for entry in entries:
                await self.socket.send_bytes(entry)
                if self.ack:
                    ids += await self._ids()
            return ids if self.ack else None
        ends, end = [], 0
        for entry in entries:
            end += len(entry)
            ends.append(end)
        header = ends if sids is None else [[sid, end] for sid, end in zip(sids, ends, strict=True)]
        await self.socket.send_str(json.dumps(header))
        await self.socket.send_bytes(b"".join(entries))
        return await self._ids() if self.ack else None

    async def _ids(self) -> list[str]:
        message = await self.socket.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            raise _closed(self.socket, message)
        return message.data.split(",")


class Puller:
    """One pull socket: `recv` the next frame pair's entries; `ack` it (ack mode, or a consumer group)."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket

    async def recv(self) -> list[PulledEntry]:
        """The next frame pair's entries; [] once the node ended the socket normally (a pull's timeout)."""
        header = await self.socket.receive()
        if header.type != aiohttp.WSMsgType.TEXT:
            closed = _closed(self.socket, header)
            if closed.code == aiohttp.WSCloseCode.OK:
                return []
            raise closed
        payload = await self.socket.receive()
        if payload.type != aiohttp.WSMsgType.BINARY:
            raise _closed(self.socket, payload)
        try:
            return unpack_entries(json.loads(header.data), payload.data)
        except (ValueError, FrameError) as error:
            raise BadAnswer(f"a pull frame pair that does not unpack: {error}") from error

    async def ack(self) -> None:
        await self.socket.send_bytes(b"")


def _closed(socket: aiohttp.ClientWebSocketResponse, message: aiohttp.WSMessage) -> SocketClosed:
    """What ended the socket, from the message that was not the frame expected: the node's close frame
    (its code and reason), else the socket's state."""
    if message.type == aiohttp.WSMsgType.CLOSE:
        return SocketClosed(message.data, message.extra or "")
    if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return SocketClosed(socket.close_code, f"a {message.type.name.lower()} frame out of turn")
    error = socket.exception()
    return SocketClosed(socket.close_code, str(error) if error else "the connection ended")


class StreamClient:
    """ptg's data-stream API of the node at `url` (`http://HOST:PORT`), with `token` or after `login`.
    Made on a running loop (its aiohttp session is); `close` it when done."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.token = token
        self._transport = _Session(url)
        self._transport.open()

    @property
    def url(self) -> str:
        return self._transport.url

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _json(self, method: str, path: str, **options: Any) -> Any:
        return await self._transport.json(method, path, headers=self._auth(), **options)

    async def login(self, username: str, password: str) -> str:
        answer = await self._transport.json("POST", paths.TOKEN, data={"username": username, "password": password})
        self.token = str(answer["access_token"])
        return self.token

    async def streams(self, info: bool = False) -> list:
        return await self._json("GET", paths.STREAMS, params={"info": "true"} if info else None)

    async def stream(self, sid: str) -> dict:
        return await self._json("GET", stream_path(paths.STREAM, sid))

    async def put_stream(self, sid: str, meta: dict, override: bool = False) -> object:
        params = {"override": "true"} if override else None
        return await self._json("PUT", stream_path(paths.STREAM, sid), json=meta, params=params)

    async def delete(self, sid: str) -> object:
        return await self._json("DELETE", stream_path(paths.STREAM, sid))

    async def post(self, sid: str, entries: list[bytes]) -> list[str]:
        form = aiohttp.FormData()
        for entry in entries:
            form.add_field("entries", entry, filename="entry", content_type="application/octet-stream")
        return await self._json("POST", stream_path(paths.DATA, sid), data=form)

    async def get(self, sid: str, last_entry_id: str = "*", count: int = 1) -> list[PulledEntry]:
        params = {"last_entry_id": last_entry_id, "count": str(count)}
        path = stream_path(paths.DATA, sid)
        async with self._transport.response("GET", path, headers=self._auth(), params=params) as response:
            payload = await response.read()
            try:
                return unpack_entries(json.loads(response.headers["entry-offset"]), payload)
            except (KeyError, ValueError, FrameError) as error:
                raise BadAnswer(f"{path}: no entry-offset that unpacks the body ({error})") from error

    @asynccontextmanager
    async def push(self, sid: str, batch: bool = False, ack: bool = False) -> AsyncIterator[Pusher]:
        query = {"batch": _flag(batch), "ack": _flag(ack)}
        async with self._socket(paths.DATA_PUSH, sid, query) as socket:
            yield Pusher(socket, batch, ack)

    @asynccontextmanager
    async def pull(
        self,
        sid: str,
        last_entry_id: str = "$",
        count: int = 1,
        latest: bool = False,
        timeout: int | None = None,  # noqa: ASYNC109 (ptg's query field, in ms, sent to the node)
        ack: bool = False,
        group: str | None = None,
        consumer: str | None = None,
        ack_wait: float | None = None,
    ) -> AsyncIterator[Puller]:
        query = {"last_entry_id": last_entry_id, "count": str(count), "latest": _flag(latest), "ack": _flag(ack)}
        optional = {"timeout": timeout, "group": group, "consumer": consumer, "ack_wait": ack_wait}
        query.update({name: str(value) for name, value in optional.items() if value is not None})
        async with self._socket(paths.DATA_PULL, sid, query) as socket:
            yield Puller(socket)

    @asynccontextmanager
    async def _socket(
        self, template: str, sid: str, query: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        url = URL(self.url + stream_path(template, sid), encoded=True).with_query(query)
        session = self._transport.session
        try:
            async with session.ws_connect(url, headers=self._auth(), max_msg_size=MAX_MESSAGE) as socket:
                yield socket
        except aiohttp.WSServerHandshakeError as error:
            raise ApiError(error.status, error.message) from error
        except aiohttp.ClientError as error:
            raise Unreachable(str(error)) from error

    async def close(self) -> None:
        await self._transport.close()


def _flag(value: bool) -> str:
    return "true" if value else "false"
