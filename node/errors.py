"""The roots of the node's exceptions, one per layer: `NodeError` for the DHT core (values, storage,
listening, rate limits) and `ServiceError` for the services built on it (farmer records, blobs,
audits). The proxy's error table (`proxy/errors.py`) maps each to an HTTP answer, so a subclass a
handler lets through is never a bare 500."""


class NodeError(Exception):
    """The DHT core refused or could not do what it was asked."""


class ServiceError(Exception):
    """A service (farmers, blobs, audits) refused or could not do what it was asked."""
