"""`SyncClient`: the async `Client` run on an event loop of its own, one call at a time, for scripts
and tests that do not run a loop themselves."""

import asyncio
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from dhtmesh.api.shapes import BlobStored, Stored, Total
from dhtmesh.client.client import Client, Key
from dhtmesh.client.farmers import Current
from dhtmesh.client.transport import ANSWER_SECONDS
from dhtmesh.crypto.identity import Identity
from dhtmesh.node.values.value import Value


class SyncClient:
    """`with SyncClient(url) as client:` — the same methods as `Client`, blocking (`timeout` as `Client`'s)."""

    def __init__(self, url: str, timeout: float = ANSWER_SECONDS) -> None:
        self.client = Client(url, timeout)
        self._runner = asyncio.Runner()

    def __enter__(self) -> "SyncClient":
        self._runner.run(self.client.__aenter__())
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._runner.run(self.client.__aexit__(kind, error, tb))
        finally:
            self._runner.close()

    def _run(self, coroutine: Any) -> Any:
        return self._runner.run(coroutine)

    def info(self) -> dict[str, Any]:
        return self._run(self.client.info())

    def stats(self) -> dict[str, Any]:
        return self._run(self.client.stats())

    def openapi(self) -> dict[str, Any]:
        return self._run(self.client.openapi())

    def get(self, key: Key) -> list[dict[str, Any]]:
        """The key's values as value JSON documents, once the node has found them all."""
        return self._run(_collect(self.client.get(key)))

    def values(self, key: Key) -> list[Value]:
        return self._run(self.client.values(key))

    def listen(self, key: Key) -> Iterator[dict[str, Any]]:
        """The listen stream, one document per `next` (close the iterator to stop listening)."""
        stream = self.client.listen(key)
        try:
            while True:
                try:
                    yield self._run(anext(stream))
                except StopAsyncIteration:
                    return
        finally:
            self._run(stream.aclose())

    def put(self, key: Key, value: Value | dict[str, Any], *, permanent: bool = False) -> Stored:
        return self._run(self.client.put(key, value, permanent=permanent))

    def sign(self, key: Key, value: Value | dict[str, Any], *, permanent: bool = False) -> Stored:
        return self._run(self.client.sign(key, value, permanent=permanent))

    def encrypt(self, key: Key, value: Value | dict[str, Any], to: str, *, permanent: bool = False) -> Stored:
        return self._run(self.client.encrypt(key, value, to, permanent=permanent))

    def cancel(self, key: Key, value_id: int | str) -> dict[str, Any]:
        return self._run(self.client.cancel(key, value_id))

    def subscribe(self, key: Key, token: str, **target: str | bool) -> list[dict[str, Any]]:
        return self._run(self.client.subscribe(key, token, **target))

    def unsubscribe(self, key: Key, token: str, **target: str) -> None:
        self._run(self.client.unsubscribe(key, token, **target))

    def address(self) -> str:
        return self._run(self.client.address())

    def node_id(self) -> bytes:
        return self._run(self.client.node_id())

    def online(self) -> str:
        return self._run(self.client.online())

    def online_farmers(self) -> list[dict[str, Any]]:
        return self._run(self.client.online_farmers())

    def total(self) -> Total:
        return self._run(self.client.total())

    def farmer(self, farmer_id: bytes) -> dict[str, Any]:
        return self._run(self.client.farmer(farmer_id))

    def farmer_audits(self, farmer_id: bytes) -> dict[str, Any]:
        return self._run(self.client.farmer_audits(farmer_id))

    def farmer_record(self, farmer_id: bytes) -> Current | None:
        return self._run(self.client.farmer_record(farmer_id))

    def register(self, farmer: Identity, payout: str | None = None, ip: str = "") -> dict[str, Any]:
        return self._run(self.client.register(farmer, payout, ip))

    def ping(self, farmer: Identity, ip: str = "") -> str:
        return self._run(self.client.ping(farmer, ip))

    def set_height(self, farmer: Identity, height: int, ip: str = "") -> str:
        return self._run(self.client.set_height(farmer, height, ip))

    def set_bandwidth(self, farmer: Identity, upload: int, download: int, ip: str = "") -> str:
        return self._run(self.client.set_bandwidth(farmer, upload, download, ip))

    def put_blob(self, body: bytes) -> BlobStored:
        return self._run(self.client.put_blob(body, len(body)))

    def read_blob(self, blob_id: str, byte_range: str | None = None) -> bytes:
        return self._run(self.client.read_blob(blob_id, byte_range))


async def _collect(stream: Any) -> list[Any]:
    return [item async for item in stream]
