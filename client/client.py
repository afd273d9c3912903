"""`Client`: the proxy's routes as typed async methods — the node, keys and values, push — with the
farmer routes (`FarmerRoutes`), blobs (`BlobRoutes`) and jobs (`JobRoutes`) mixed in from their own modules."""

from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any

from dhtmesh.api import paths
from dhtmesh.api.shapes import Stored
from dhtmesh.api.value_json import ValueJsonError, value_from_json, value_to_json
from dhtmesh.client.blobs import BlobRoutes
from dhtmesh.client.errors import BadAnswer
from dhtmesh.client.farmers import FarmerRoutes
from dhtmesh.client.jobs import JobRoutes
from dhtmesh.client.transport import ANSWER_SECONDS, Transport, line_document
from dhtmesh.node.values.value import Value

Key = str | bytes  # a string is hashed as OpenDHT's clients hash it; 20 bytes are the key itself


class Client(FarmerRoutes, BlobRoutes, JobRoutes):
    """A client of the proxy at `url` (`http://HOST:PORT`); open it with `async with Client(url) as c`.
    `timeout`: the seconds a plain answer may take (a stream, a blob, has no limit), else `TimedOut`."""

    def __init__(self, url: str, timeout: float = ANSWER_SECONDS) -> None:
        self.transport = Transport(url, timeout)
        self._node_id: bytes | None = None  # the node's id, once asked (`node_id`): it never changes

    async def __aenter__(self) -> "Client":
        self.transport.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.transport.close()

    # ---- the node -------------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """`/node/info`: the node's id, routing table health, storage and counters."""
        return await self.transport.document("GET", paths.NODE_INFO)

    async def stats(self) -> dict[str, Any]:
        """`/node/stats`: the proxy's counts (listens, permanent puts, requests) and the node's info."""
        return await self.transport.document("GET", paths.NODE_STATS)

    async def openapi(self) -> dict[str, Any]:
        """`/openapi.json`: the proxy's routes as an OpenAPI document."""
        return await self.transport.document("GET", paths.OPENAPI)

    # ---- keys and values ------------------------------------------------------------------------

    def get(self, key: Key) -> AsyncGenerator[dict[str, Any], None]:
        """The key's values as value JSON documents, as the node finds them."""
        return self.transport.lines(paths.key_path(key))

    async def values(self, key: Key) -> list[Value]:
        """Every value of the key, decoded."""
        return [_value_of(document) async for document in self.get(key)]

    def listen(self, key: Key) -> AsyncGenerator[dict[str, Any], None]:
        """The key's current values, then each new or changed one, and each that expires (with
        `"expired": true`), as value JSON documents; it never ends (break out, or close it)."""
        return self.transport.lines(paths.key_path(key, paths.LISTEN))

    async def put(self, key: Key, value: Value | dict[str, Any], *, permanent: bool = False) -> Stored:
        """Put a value as it is (signed by its owner, or unsigned); id 0 lets the node pick one.
        `permanent`: the node re-announces it until `cancel`led (or a day without a renewed put)."""
        return await self._post(paths.key_path(key), value, permanent)

    async def sign(self, key: Key, value: Value | dict[str, Any], *, permanent: bool = False) -> Stored:
        """Have the node sign the value as its own and put it (an id of the node's value edits it)."""
        return await self._post(paths.key_path(key, paths.SIGN), value, permanent)

    async def encrypt(self, key: Key, value: Value | dict[str, Any], to: str, *, permanent: bool = False) -> Stored:
        """Have the node encrypt the value to `to` (an Ed25519 public key, 64 hex or PEM; or an
        OpenDHT key id, 40 hex), sign and put it."""
        return await self._post(paths.key_path(key, paths.ENCRYPT), value, permanent, {"to": to})

    async def cancel(self, key: Key, value_id: int | str) -> dict[str, Any]:
        """Stop re-announcing this client's permanent put of `value_id`: `{"cancelled": id}`."""
        return await self.transport.document("DELETE", paths.key_path(key, paths.CANCEL, value_id=value_id))

    async def _post(
        self, path: str, value: Value | dict[str, Any], permanent: bool, extra: dict | None = None
    ) -> Stored:
        document = value_to_json(value) if isinstance(value, Value) else dict(value)
        if permanent:
            document["permanent"] = True
        answer = await self.transport.document("POST", path, json=document | (extra or {}))
        try:
            return Stored.from_json(answer)
        except ValueError as error:  # a ValueJsonError for the value, or a count that is not one
            raise BadAnswer(f"{path}: the node's answer is not a stored value: {error}") from error

    # ---- push -----------------------------------------------------------------------------------

    async def subscribe(self, key: Key, token: str, **target: str | bool) -> list[dict[str, Any]]:
        """Push notifications of the key's changes to the device `token` (`client_id`, `platform`,
        `session_id`, `topic`; `refresh=True` renews); a renewal answers with the key's values."""
        body = {"key": token, **target}
        path = paths.key_path(key)
        text = await self.transport.text("SUBSCRIBE", path, json=body)
        return [document for document in _json_lines(path, text) if document]

    async def unsubscribe(self, key: Key, token: str, **target: str) -> None:
        """Stop the push notifications of the key to the device `token`."""
        await self.transport.text("UNSUBSCRIBE", paths.key_path(key), json={"key": token, **target})


def _value_of(document: dict[str, Any]) -> Value:
    try:
        return value_from_json(document)
    except ValueJsonError as error:
        raise BadAnswer(f"the node sent a value that does not parse: {error}") from error


def _json_lines(path: str, text: str) -> list[dict[str, Any]]:
    return [line_document(path, line) for line in text.splitlines() if line.strip()]
