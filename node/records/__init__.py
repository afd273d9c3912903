"""Records: values of reserved types whose data has a meaning the mesh enforces (farmers, for now)."""

from dhtmesh.node.records.farmer import FARMER_VALUE_TYPE, FarmerRecord, InvalidRecord, farmer_key
from dhtmesh.node.records.rules import check_value

__all__ = ["FARMER_VALUE_TYPE", "FarmerRecord", "InvalidRecord", "check_value", "farmer_key"]
