"""One aiohttp session to one proxy: a request answered whole, or a response left open to stream, with
aiohttp's errors and the proxy's error statuses turned into the client's exceptions."""

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from yarl import URL

from dhtmesh.client.errors import ApiError, BadAnswer, TimedOut, Unreachable

# A stream (a listen, a blob) may stay quiet for as long as it likes; a plain answer may not.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)
ANSWER_SECONDS = 300.0


class Transport:
    """The session (opened by `open`, closed by `close`), the proxy's base URL (`http://HOST:PORT`), and
    how long a plain answer may take, in seconds."""

    def __init__(self, url: str, answer_seconds: float = ANSWER_SECONDS) -> None:
        self.url = str(URL(url.rstrip("/")))  # normalized once: a path is added to it as it is
        self.answer_timeout = aiohttp.ClientTimeout(total=answer_seconds)
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=STREAM_TIMEOUT)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the client is not open: use `async with Client(url) as client`")
        return self._session

    async def text(self, method: str, path: str, **options: Any) -> str:
        """The body of a successful answer, as text."""
        async with self.response(method, path, timeout=self.answer_timeout, **options) as response:
            return await response.text()

    async def json(self, method: str, path: str, **options: Any) -> Any:
        """The JSON document of a successful answer."""
        text = await self.text(method, path, **options)
        try:
            return json.loads(text)
        except ValueError as error:
            raise BadAnswer(f"{path}: the node's answer is not JSON") from error

    async def document(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        """The JSON object of a successful answer."""
        document = await self.json(method, path, **options)
        if not isinstance(document, dict):
            raise BadAnswer(f"{path}: the node's answer is not a JSON object")
        return document

    @asynccontextmanager
    async def response(self, method: str, path: str, **options: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """The open response of a successful request (its status line and headers read); an error
        status is raised as an `ApiError`, a failed connection (then or while the body is read) as
        `Unreachable`, a timeout as `TimedOut`. `path` is sent as it is (`encoded`): its fields are
        escaped already (`api.paths`), a farmer signed exactly it, and `..` in it is no route."""
        url = URL(self.url + path, encoded=True)
        try:
            async with self.session.request(method, url, **options) as response:
                if response.status >= 400:
                    raise ApiError.from_body(response.status, await response.text())
                yield response
        except TimeoutError as error:  # aiohttp's own timeouts are ClientErrors too: caught here first
            raise TimedOut(f"{method} {path}: timed out{f' ({error})' if str(error) else ''}") from error
        except aiohttp.ClientError as error:
            raise Unreachable(str(error)) from error

    async def lines(self, path: str, method: str = "GET") -> AsyncGenerator[dict[str, Any], None]:
        """The JSON lines of a streamed answer, decoded, as they arrive."""
        async with self.response(method, path) as response:
            async for line in response.content:
                if line.strip():
                    yield line_document(path, line)


def line_document(path: str, line: bytes | str) -> dict[str, Any]:
    """One line of a JSON-lines answer of `path`, as the JSON object it must be (`BadAnswer` if not)."""
    try:
        document = json.loads(line)
    except ValueError as error:
        raise BadAnswer(f"{path}: a line of the node's answer is not JSON") from error
    if not isinstance(document, dict):
        raise BadAnswer(f"{path}: a line of the node's answer is not a JSON object")
    return document
