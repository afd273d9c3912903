"""Value types and their expiry, as OpenDHT's built-in types define them, and the expiry of the types
the node's services add (`register_expiry`: the record kinds of node/records/ register theirs)."""

MINUTE = 60.0
DAY = 86400.0
DEFAULT_EXPIRY = 10 * MINUTE  # type 0, USER_DATA
CERTIFICATE_TYPE = 8  # an OpenDHT identity's certificate, published under its key id
MAX_TYPE_EXPIRY = 30 * DAY  # no type lives longer: a peer's store asking for more is refused

_EXPIRY_BY_TYPE = {
    0: DEFAULT_EXPIRY,
    1: 5 * MINUTE,  # DhtMessage
    2: 15 * MINUTE,  # IpServiceAnnouncement
    3: 5 * MINUTE,  # ImMessage
    4: 7 * DAY,  # TrustRequest
    5: 1 * MINUTE,  # IceCandidates
    CERTIFICATE_TYPE: 7 * DAY,
}


def register_expiry(value_type: int, seconds: float) -> None:
    """Give a type added by a service its expiry; a type keeps the expiry it was first given."""
    if not 0 < seconds <= MAX_TYPE_EXPIRY or _EXPIRY_BY_TYPE.setdefault(value_type, seconds) != seconds:
        raise ValueError(f"type {value_type:#06x} cannot live {seconds} s")


def expiry_for(value_type: int) -> float:
    """Seconds a value of this type lives after a put; unknown types live as type 0 does."""
    return _EXPIRY_BY_TYPE.get(value_type, DEFAULT_EXPIRY)
