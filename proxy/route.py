"""What every route module shares: the `Route` table entry and the application's keys (the node, the
push relay, the request counters, the farmer registry and reputations, the replay guard and rate
limit of signed requests, the blob uploader, reader and size limit, the jobs and workers' standings,
the accounts and data streams, the per-client cap on listen streams, the origins allowed to change
state, the log of the proxy's own errors, and the routes' failure labels)."""

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from dhtmesh.crypto.request_auth import ReplayGuard
from dhtmesh.node.accounts.service import Accounts
from dhtmesh.node.audits.book import ReputationBook
from dhtmesh.node.blobs.download import BlobReader
from dhtmesh.node.blobs.upload import Uploader
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.jobs.service import Jobs
from dhtmesh.node.jobs.standing import Standings
from dhtmesh.node.records.registry import FarmerRegistry
from dhtmesh.node.stats import ErrorLog
from dhtmesh.node.streams.service import Streams
from dhtmesh.node.wire.ratelimit import Buckets, RequestLimiter, Slots
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
JOBS = web.AppKey("jobs", Jobs)
STANDINGS = web.AppKey("standings", Standings)
JOB_CHANGES = web.AppKey("job_changes", Slots)
ACCOUNTS = web.AppKey("accounts", Accounts)
STREAMS = web.AppKey("streams", Streams)
FOLLOW_BUDGET = web.AppKey("follow_budget", Buckets)  # result keys a client may make the node follow, per second
LISTEN_SLOTS = web.AppKey("listen_slots", Slots)
ALLOWED_ORIGINS = web.AppKey("allowed_origins", frozenset)
ERRORS = web.AppKey("errors", ErrorLog)
FAILURE_LABELS = web.AppKey("failure_labels", dict)  # handler: its dataserv failure label (`Route.failure`)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


JSON = "application/json"


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
    media: str | None = JSON  # the type of a successful reply's body; None: it has none. Errors are JSON.
    body_media: str = JSON  # the type of the request body, when there is one
    headers: dict[str, str] = field(default_factory=dict)  # request headers it reads: name, meaning
    failure: str | None = None  # dataserv's label before a refusal's text ("Ping Failed"), see errors.py
    json_type: str = "object"  # what a successful JSON reply is (dcp-rest's lists: "array")


def served_paths(path: str) -> tuple[str, ...]:
    """The router's paths for a route's: OpenDHT's router takes every route with a trailing slash too
    (`GET /key/{h}/` is `GET /key/{h}`, and so `GET /key/` is the legacy `GET /{h}` of the key "key"),
    and a path variable is any segment (aiohttp's default would refuse `{` and `}`, which a key may hold)."""
    routed = re.sub(r"{(\w+)}", r"{\1:[^/]+}", path)
    return (routed,) if path == "/" else (routed, f"{routed}/")


def table_path(served: str) -> str:
    """The route table's path of a path `served_paths` made."""
    return served if served == "/" else served.removesuffix("/")
