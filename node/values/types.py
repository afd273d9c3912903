"""Value types and their expiry, as OpenDHT's built-in types define them."""

MINUTE = 60.0
DAY = 86400.0
DEFAULT_EXPIRY = 10 * MINUTE  # type 0, USER_DATA
CERTIFICATE_TYPE = 8  # an OpenDHT identity's certificate, published under its key id
# dhtmesh's record types (node/records/). A farmer record lives 30 days after its farmer's last signed
# change: a farmer that is away for good drops out of the registry then, not before.
FARMER_RECORD_TYPE = 0x4661
FARMER_RECORD_EXPIRY = 30 * DAY
# A manifest lives as long as someone re-announces it: its uploader and every farmer keeping a chunk of it.
BLOB_MANIFEST_TYPE = 0x426C
BLOB_MANIFEST_EXPIRY = 30 * DAY
# A holding is re-announced by its holder for as long as it keeps the chunk.
HOLDING_TYPE = 0x486C
HOLDING_EXPIRY = 1 * DAY
# An auditor's log of one farmer: the reputation window. A log not updated for a day is gone.
AUDIT_TYPE = 0x4175
AUDIT_EXPIRY = 1 * DAY

_EXPIRY_BY_TYPE = {
    0: DEFAULT_EXPIRY,
    1: 5 * MINUTE,  # DhtMessage
    2: 15 * MINUTE,  # IpServiceAnnouncement
    3: 5 * MINUTE,  # ImMessage
    4: 7 * DAY,  # TrustRequest
    5: 1 * MINUTE,  # IceCandidates
    CERTIFICATE_TYPE: 7 * DAY,
    FARMER_RECORD_TYPE: FARMER_RECORD_EXPIRY,
    BLOB_MANIFEST_TYPE: BLOB_MANIFEST_EXPIRY,
    HOLDING_TYPE: HOLDING_EXPIRY,
    AUDIT_TYPE: AUDIT_EXPIRY,
}
MAX_TYPE_EXPIRY = max(_EXPIRY_BY_TYPE.values())


def expiry_for(value_type: int) -> float:
    """Seconds a value of this type lives after a put; unknown types live as type 0 does."""
    return _EXPIRY_BY_TYPE.get(value_type, DEFAULT_EXPIRY)
