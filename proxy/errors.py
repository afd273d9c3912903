"""The proxy's one error table: which exception becomes which HTTP status and `{"err"}` text, and which
counter it adds to besides `http_bad_requests`. The middleware (`app.json_errors`) answers from it;
handlers raise (the proxy's own refusals below, or the node's, services' and crypto's exceptions) and
never build an error reply, so the same refusal has the same status on every route.

An exception is answered by the entry of its nearest class in the table (its own, else a base's); every
layer's root is in the table, so no exception of the package's layers is a bare 500. A store refusal is
409 when it is about the value or a quota (the same node will refuse it again), 507 when this node's
disk is full and 503 when it fails (another node may take it), 429 when the client has as many
permanent puts as it may.

dataserv's routes (`/api/register`, ...) put their failure label before a refusal's text ("Ping Failed:
Farmer not found."); the route table gives the label (`Route.failure`), the table which refusals carry it.
"""

from collections.abc import Callable
from dataclasses import dataclass

from dhtmesh.api.value_json import ValueJsonError
from dhtmesh.crypto.addresses import InvalidAddress
from dhtmesh.crypto.errors import CryptoError
from dhtmesh.crypto.request_auth import RequestAuthError
from dhtmesh.node.accounts.errors import AccountError, AccountExists, BadAccount, BadLogin, BadToken
from dhtmesh.node.blobs.download import ChunkUnavailable
from dhtmesh.node.blobs.upload import BlobTooLarge, PlacementFailed
from dhtmesh.node.dht import ListenRefused, PutRefused
from dhtmesh.node.errors import NodeError, ServiceError
from dhtmesh.node.jobs.owner import BadJob, JobClosed
from dhtmesh.node.jobs.sandbox import SandboxError
from dhtmesh.node.jobs.service import NotOwner, UnknownJob
from dhtmesh.node.jobs.view import TooManyFollowed
from dhtmesh.node.records.farmer_events import HeightOverLimit
from dhtmesh.node.records.registry import AlreadyRegistered, RegistryError, UnknownFarmer
from dhtmesh.node.streams.errors import BadStreamRequest, EntryTooLarge, StreamError, StreamUnavailable, UnknownStream
from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.values.value import InvalidValue
from dhtmesh.node.wire.ratelimit import Full
from dhtmesh.proxy.push import PushError, SubscriptionLimit


class ProxyError(Exception):
    """A request the proxy refuses; `counter`, when given, is counted too (so an operator can tell a
    flood of one kind, such as refused listen streams, from other refusals)."""

    def __init__(self, message: str, counter: str | None = None) -> None:
        super().__init__(message)
        self.counter = counter


class BadRequest(ProxyError):
    """Input that does not parse or is out of range (400)."""


class Forbidden(ProxyError):
    """A request this client may not make (403)."""


class NotFound(ProxyError):
    """Nothing at the path (404)."""


class TooLarge(ProxyError):
    """A body or a number over the node's limit (413)."""


class RangeNotSatisfiable(ProxyError):
    """A `Range` outside the resource (416)."""


class TooManyRequests(ProxyError):
    """The client, or everyone, holds or sends as much as it may (429)."""


class NotEnabled(ProxyError):
    """A feature the operator did not turn on (501)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """How one kind of exception is answered."""

    status: int | Callable[[BaseException], int]
    text: Callable[[BaseException], str] = str
    counter: str | None = None
    labelled: bool = True  # preceded by the route's dataserv failure label, if it has one
    headers: tuple[tuple[str, str], ...] = ()  # sent with the answer (a 401's `WWW-Authenticate`)


# The node's disk, not the value or a quota: another node may take the value (see the module docstring).
_STORE_STATUS = {Verdict.REFUSE_DISK_FULL: 507, Verdict.REFUSE_STORAGE_ERROR: 503, Verdict.REFUSE_PERMANENT_PUTS: 429}


def _store_status(error: BaseException) -> int:
    assert isinstance(error, PutRefused)
    return _STORE_STATUS.get(error.verdict, 409)


_BEARER = (("WWW-Authenticate", "Bearer"),)  # RFC 6750 §3, as ptg answers a refused token

TABLE: dict[type[BaseException], Refusal] = {
    # The proxy's own refusals.
    ProxyError: Refusal(400),
    BadRequest: Refusal(400),
    Forbidden: Refusal(403),
    NotFound: Refusal(404),
    TooLarge: Refusal(413, labelled=False),  # dataserv's "Height limit exceeded" has no label
    RangeNotSatisfiable: Refusal(416),
    TooManyRequests: Refusal(429),
    NotEnabled: Refusal(501),
    ValueJsonError: Refusal(400),
    PushError: Refusal(400),
    SubscriptionLimit: Refusal(429, counter="http_subscriptions_refused"),
    # Crypto: bad keys, addresses and signatures are the client's.
    CryptoError: Refusal(400),
    InvalidAddress: Refusal(400, lambda error: f"Invalid node id or address ({error})."),
    RequestAuthError: Refusal(401, lambda error: f"Invalid authentication headers ({error})."),
    # The DHT core: a value is the client's fault; a store or listen refusal is this node's answer.
    NodeError: Refusal(503),
    InvalidValue: Refusal(400),
    Full: Refusal(429),
    PutRefused: Refusal(_store_status),
    ListenRefused: Refusal(503, counter="http_listens_refused"),
    # Services.
    ServiceError: Refusal(503),
    RegistryError: Refusal(400),  # a farmer record that is missing, malformed or not the change's
    UnknownFarmer: Refusal(404, lambda _: "Farmer not found."),
    AlreadyRegistered: Refusal(409, lambda _: "Address already is registered."),
    HeightOverLimit: Refusal(413, labelled=False),
    BlobTooLarge: Refusal(413),
    PlacementFailed: Refusal(503, lambda error: f"not stored: {error}"),
    ChunkUnavailable: Refusal(503, lambda error: f"unavailable: {error}"),
    BadJob: Refusal(400),
    JobClosed: Refusal(409),
    UnknownJob: Refusal(404),
    NotOwner: Refusal(403),
    SandboxError: Refusal(503, lambda error: f"sandbox: {error}"),
    TooManyFollowed: Refusal(429, counter="http_job_reads_refused"),
    AccountError: Refusal(503),
    BadLogin: Refusal(401, counter="http_logins_refused", headers=_BEARER),
    BadToken: Refusal(401, counter="http_tokens_refused", headers=_BEARER),
    AccountExists: Refusal(409),
    BadAccount: Refusal(400),
    StreamError: Refusal(400),
    UnknownStream: Refusal(404),
    BadStreamRequest: Refusal(400),
    EntryTooLarge: Refusal(413),
    StreamUnavailable: Refusal(503, lambda error: f"stream unavailable: {error}"),
}


def refusal_of(error: BaseException) -> Refusal | None:
    """The table's entry for `error`'s nearest class, None for an exception of no layer (a bug: a 500)."""
    return next((TABLE[kind] for kind in type(error).__mro__ if kind in TABLE), None)


def status_of(error: BaseException, refusal: Refusal) -> int:
    """The status answering `error`, whose table entry is `refusal`."""
    return refusal.status if isinstance(refusal.status, int) else refusal.status(error)


def answer(error: BaseException, refusal: Refusal, label: str | None) -> tuple[int, str]:
    """The status and `{"err"}` text of a refused request; `label` is its route's dataserv failure label."""
    status = status_of(error, refusal)
    text = refusal.text(error)
    if label and refusal.labelled:
        text = f"{label}: {text}" if text.endswith(".") else f"{label}: {text}."
    return status, text
