"""Durable value storage: SQLite (WAL) in the node's data directory, with quotas and expiry."""

from dhtmesh.node.storage.store import Quotas, ValueStore

__all__ = ["Quotas", "ValueStore"]
