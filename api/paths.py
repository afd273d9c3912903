"""The proxy's routes as paths: every template the proxy's route tables are built from, and functions
that fill them in, from which the client builds every request; a test holds the two to each other.
Every field is escaped into one path segment, so that no text (`/`, `?`, `#`, `..`) changes the route."""

from urllib.parse import quote

from dhtmesh.api.keys import parse_key

ROOT = "/"  # node info, as OpenDHT's proxy serves it
NODE_INFO = "/node/info"
NODE_STATS = "/node/stats"
OPENAPI = "/openapi.json"
KEY = "/key/{key}"
LISTEN = "/key/{key}/listen"
SIGN = "/key/{key}/sign"
ENCRYPT = "/key/{key}/encrypt"
CANCEL = "/key/{key}/{value_id}"
KEY_OPTIONS = "/key/{key}/options"
LEGACY_KEY = "/{key}"  # OpenDHT's routes before /key: the same key routes
REGISTER_OWN = "/api/register/{nodeid}"  # payout to the farmer's own address
REGISTER = "/api/register/{nodeid}/{payout_addr}"
PING = "/api/ping/{nodeid}"
HEIGHT = "/api/height/{nodeid}/{height}"
BANDWIDTH = "/api/bandwidth/{nodeid}/{upload}/{download}"
ONLINE = "/api/online"
ONLINE_JSON = "/api/online/json"
TOTAL = "/api/total"
ADDRESS = "/api/address"
FARMER = "/api/farmer/{nodeid}"
FARMER_AUDITS = "/api/farmer/{nodeid}/audits"
FARMER_RECORD = "/api/farmer/{nodeid}/record"
BLOBS = "/api/blob"
BLOB = "/api/blob/{blob_id}"
# dcp-rest's job routes (its shapes), under its prefix
JOBS_PREFIX = "/api/v0"
JOB_NEW = "/api/v0/job"
JOB = "/api/v0/job/{job_id}"
JOB_STATUS = "/api/v0/job/{job_id}/status"
JOB_RECORD = "/api/v0/job/{job_id}/record"  # the job's latest signed value: what its owner's next change follows
JOB_SLICES = "/api/v0/job/{job_id}/slices"
JOB_RESULTS = "/api/v0/job/{job_id}/result"
JOB_RESULT = "/api/v0/job/{job_id}/result/{slice_number}"
JOB_LISTEN = "/api/v0/job/{job_id}/results/listen"
JOB_CLOSE = "/api/v0/job/{job_id}/close"
JOBS = "/api/v0/jobs"
JOBS_COUNT = "/api/v0/jobs/count"
ACCOUNTS = "/api/v0/accounts"
# ptg-api-server's routes (its shapes), at the root as it serves them; mesh-wide users under /api/v0
TOKEN = "/token"
PTG_PING = "/ping"
STREAMS = "/streams"
STREAM = "/streams/{sid}"
DATA = "/data/{sid}"
DATA_PUSH = "/data/{sid}/push"
DATA_PULL = "/data/{sid}/pull"
USER = "/api/v0/users/{name}"

TEMPLATES = (
    ROOT, NODE_INFO, NODE_STATS, OPENAPI, KEY, LISTEN, SIGN, ENCRYPT, CANCEL, KEY_OPTIONS, LEGACY_KEY,
    REGISTER_OWN, REGISTER, PING, HEIGHT, BANDWIDTH, ONLINE, ONLINE_JSON, TOTAL, ADDRESS, FARMER, FARMER_AUDITS,
    FARMER_RECORD, BLOBS, BLOB, JOB_NEW, JOB, JOB_STATUS, JOB_RECORD, JOB_SLICES, JOB_RESULTS, JOB_RESULT, JOB_LISTEN,
    JOB_CLOSE, JOBS, JOBS_COUNT, ACCOUNTS, TOKEN, PTG_PING, STREAMS, STREAM, DATA, DATA_PUSH, DATA_PULL, USER,
)  # fmt: skip


def segment(field: object) -> str:
    """`field` as one path segment, as it must reach the route: every character but letters, digits
    and `_.-~` percent-escaped, and a segment of dots (`.`, `..`) too, which would otherwise be
    resolved as a relative path (the client sends the path as it is built: `Transport`)."""
    text = quote(str(field), safe="")
    return text.replace(".", "%2E") if set(text) == {"."} else text


def key_path(key: str | bytes, template: str = KEY, **fields: object) -> str:
    """`template` for a key (its other fields as given): 20 bytes as they are, a string hashed as
    OpenDHT clients hash it (`parse_key`: SHA-1 of the exact string, unless it is 40 hex), so that
    `?`, `#`, `/` or `..` in a key reach the node as part of it."""
    digest = key if isinstance(key, bytes) else parse_key(key)
    return template.format(key=digest.hex(), **_segments(fields))


def farmer_path(template: str, node_id: bytes, **fields: object) -> str:
    """A farmer route's path for the farmer `node_id` (its other fields as given)."""
    return template.format(nodeid=node_id.hex(), **_segments(fields))


def blob_path(blob_id: str) -> str:
    """The path of the blob `blob_id` (64 hex, when it is one)."""
    return BLOB.format(blob_id=segment(blob_id))


def job_path(template: str, job_id: str, **fields: object) -> str:
    """A job route's path for the job `job_id` (its other fields as given)."""
    return template.format(job_id=segment(job_id), **_segments(fields))


def _segments(fields: dict[str, object]) -> dict[str, str]:
    return {name: segment(field) for name, field in fields.items()}
