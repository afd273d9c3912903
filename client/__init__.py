"""A typed client of a dhtmesh node's proxy: `Client` (async, over one aiohttp session) with a method
for every route, and `SyncClient`, the same on a loop of its own for scripts. Requests and answers are
built with the contract the proxy itself uses (`dhtmesh.api`); an HTTP error is one `ApiError`."""

from dhtmesh.client.client import Client
from dhtmesh.client.errors import ApiError, BadAnswer, ClientError, CutShort, NotRegistered, TimedOut, Unreachable
from dhtmesh.client.sync import SyncClient

__all__ = [
    "ApiError",
    "BadAnswer",
    "Client",
    "ClientError",
    "CutShort",
    "NotRegistered",
    "SyncClient",
    "TimedOut",
    "Unreachable",
]
