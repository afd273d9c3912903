"""The proxy's routes as paths: each template as the proxy's route table writes it, and a function
that fills it in. The client builds every request from these; a test holds them to the proxy's table."""

from dhtmesh.api.keys import parse_key

NODE_INFO = "/node/info"
NODE_STATS = "/node/stats"
OPENAPI = "/openapi.json"
KEY = "/key/{key}"
LISTEN = "/key/{key}/listen"
SIGN = "/key/{key}/sign"
ENCRYPT = "/key/{key}/encrypt"
CANCEL = "/key/{key}/{value_id}"
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

TEMPLATES = (
    NODE_INFO, NODE_STATS, OPENAPI, KEY, LISTEN, SIGN, ENCRYPT, CANCEL, REGISTER, PING, HEIGHT, BANDWIDTH,
    ONLINE, ONLINE_JSON, TOTAL, ADDRESS, FARMER, FARMER_AUDITS, FARMER_RECORD, BLOBS, BLOB,
)  # fmt: skip


def key_path(key: str | bytes, template: str = KEY, **fields: object) -> str:
    """`template` for a key (its other fields as given): 20 bytes as they are, a string hashed as
    OpenDHT clients hash it (`parse_key`: SHA-1 of the exact string, unless it is 40 hex), so that
    `?`, `#`, `/` or `..` in a key reach the node as part of it."""
    digest = key if isinstance(key, bytes) else parse_key(key)
    return template.format(key=digest.hex(), **fields)


def farmer_path(template: str, node_id: bytes, **fields: object) -> str:
    """A farmer route's path for the farmer `node_id` (its other fields as given)."""
    return template.format(nodeid=node_id.hex(), **fields)
