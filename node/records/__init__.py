"""Records: values of reserved types whose data has a meaning the mesh enforces (farmers, blob
manifests, holdings of chunks, audit logs): one module a kind, each a `kind.RecordKind` in the table of
`rules.KINDS`."""

from dhtmesh.node.records.farmer import (
    DIRECTORY_KEYS,
    FARMER_VALUE_TYPE,
    FarmerRecord,
    farmer_key,
    farmer_value_id,
    signed_farmer_value,
)
from dhtmesh.node.records.kind import InvalidRecord
from dhtmesh.node.records.rules import (
    RESERVED_TYPES,
    check_value,
    is_valid_successor,
    lifetime,
    open_refresh,
)

__all__ = [
    "DIRECTORY_KEYS",
    "FARMER_VALUE_TYPE",
    "RESERVED_TYPES",
    "FarmerRecord",
    "InvalidRecord",
    "check_value",
    "farmer_key",
    "farmer_value_id",
    "is_valid_successor",
    "lifetime",
    "open_refresh",
    "signed_farmer_value",
]
