"""A typed client of a dhtmesh node's proxy: `Client` (async, over one aiohttp session) with a method
for every route, and `SyncClient`, the same on a loop of its own for scripts. Requests and answers are
built with the contract the proxy itself uses (`dhtmesh.api`); an HTTP error is one `ApiError`. A job's
owner-side records are built and signed here: `BadJob` when they cannot be, before anything is sent."""

from dhtmesh.client.client import Client
from dhtmesh.client.errors import ApiError, BadAnswer, ClientError, CutShort, NotRegistered, TimedOut, Unreachable
from dhtmesh.client.jobs import BadJob, SliceRange, opened
from dhtmesh.client.sync import SyncClient

__all__ = [
    "ApiError",
    "BadAnswer",
    "BadJob",
    "Client",
    "ClientError",
    "CutShort",
    "NotRegistered",
    "SliceRange",
    "SyncClient",
    "TimedOut",
    "Unreachable",
    "opened",
]
