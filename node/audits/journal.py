"""An auditor's signed logs: one value per audited farmer, under the farmer's audit key, holding the
auditor's latest audits of it (within the reputation window). The auditor remembers the seq and
entries it last published; after a restart it reads them back from the mesh first."""

from dhtmesh.node.audits.reputation import WINDOW
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.audit import (
    AUDIT_TYPE,
    MAX_ENTRIES,
    AuditEntry,
    AuditLog,
    audits_key,
    decode_audit_log,
    signed_audit_log,
)
from dhtmesh.node.records.farmer import farmer_value_id


class AuditJournal:
    def __init__(self, node: DhtNode) -> None:
        self._node = node
        self._published: dict[bytes, tuple[int, tuple[AuditEntry, ...]]] = {}  # farmer -> (seq, entries)

    async def record(self, farmer_id: bytes, entry: AuditEntry) -> None:
        """Add `entry` to this auditor's log of `farmer_id` and publish the log (raises `PutRefused`)."""
        seq, entries = self._published.get(farmer_id) or await self._load(farmer_id)
        kept = tuple(e for e in (*entries, entry) if e.time >= entry.time - WINDOW)[-MAX_ENTRIES:]
        log = AuditLog(self._node.node_id, farmer_id, kept)
        value = signed_audit_log(self._node.identity, log, seq + 1)
        self._published[farmer_id] = (seq + 1, kept)
        await self._node.put(audits_key(farmer_id), value)

    async def _load(self, farmer_id: bytes) -> tuple[int, tuple[AuditEntry, ...]]:
        own_key = self._node.identity.public_key
        values = await self._node.get(audits_key(farmer_id), farmer_value_id(self._node.node_id), AUDIT_TYPE)
        for value in values:
            if value.owner == own_key and value.type == AUDIT_TYPE:
                return value.seq, decode_audit_log(value.data).entries
        return 0, ()
