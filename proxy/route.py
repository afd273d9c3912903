"""What every route module shares: the `Route` table entry and the application's keys (the node, the
push relay, the request counters, the farmer registry and reputations, the replay guard and rate
limit of signed requests, the blob uploader, reader and size limit, the per-client cap on listen
streams, the origins allowed to change state, and the log of the proxy's own errors)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from dhtmesh.crypto.request_auth import ReplayGuard
from dhtmesh.node.audits.book import ReputationBook
from dhtmesh.node.blobs.download import BlobReader
from dhtmesh.node.blobs.upload import Uploader
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.registry import FarmerRegistry
from dhtmesh.node.stats import ErrorLog
from dhtmesh.node.wire.ratelimit import RequestLimiter, Slots
from dhtmesh.proxy.push import PushRelay
from dhtmesh.proxy.stats import RequestStats

NODE = web.AppKey("node", DhtNode)
PUSH = web.AppKey("push", PushRelay)
STATS = web.AppKey("stats", RequestStats)
REGISTRY = web.AppKey("registry", FarmerRegistry)
REPLAY_GUARD = web.AppKey("replay_guard", ReplayGuard)
SIGNED_LIMITER = web.AppKey("signed_limiter", RequestLimiter)
REPUTATION = web.AppKey("reputation", ReputationBook)
UPLOADER = web.AppKey("uploader", Uploader)
BLOB_READER = web.AppKey("blob_reader", BlobReader)
BLOB_LIMIT = web.AppKey("blob_limit", int)
LISTEN_SLOTS = web.AppKey("listen_slots", Slots)
ALLOWED_ORIGINS = web.AppKey("allowed_origins", frozenset)
ERRORS = web.AppKey("errors", ErrorLog)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: str | None = None  # what the request body holds, if anything
    replies: dict[int, str] = field(default_factory=lambda: {200: "OK"})
    streams: bool = False  # a chunked reply of one JSON value per line
    unsafe_get: bool = False  # a GET that changes state (dataserv's farmer reports): guarded as a POST is
