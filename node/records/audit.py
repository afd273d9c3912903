"""Audit records: what an auditor found when it challenged a farmer, signed by the auditor.

Each auditor keeps one value per farmer it audits, under the farmer's audit key (`audits_key`), with
a value id derived from the auditor's node id; the value lists the auditor's latest audits of that
farmer (chunk, challenge, outcome, time), newest last, at most `MAX_ENTRIES`, each new audit a higher
seq. So a farmer's audits are read with one get, an auditor cannot write in another's name, and a
busy auditor cannot fill the key (one value each; the key is reserved for audit logs). A log lives a
day after its newest entry (`KIND.anchor`), however often it is re-sent.
"""

import time
from dataclasses import dataclass
from enum import StrEnum

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import NODE_ID_SIZE
from dhtmesh.crypto.merkle import CHUNK_SIZE, ROOT_SIZE
from dhtmesh.node.records.blob import BLOB_ID_SIZE
from dhtmesh.node.records.keys import reserved_key
from dhtmesh.node.records.kind import CLOCK_SKEW, InvalidRecord, RecordKind, pack, unpack, well_sized
from dhtmesh.node.values.types import DAY
from dhtmesh.node.values.value import Value

AUDIT_TYPE = 0x4175
AUDIT_EXPIRY = 1 * DAY  # the reputation window: a log not updated for a day is gone
MAX_ENTRIES = 32
NONCE_SIZE = 16
MAX_INDICES = 64
_KEY_DOMAIN = b"dhtmesh/audits/"


class Outcome(StrEnum):
    PASSED = "passed"  # every challenged block came back with a path to the root, signed, in time
    FAILED = "failed"  # an answer that does not check, or "not held" from a farmer whose holding says it is
    MISSED = "missed"  # no answer within the deadline (or unreachable)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    root: bytes
    blob_id: bytes
    length: int  # the chunk's length, as its manifest gives it: what a pass proves the farmer holds
    nonce: bytes
    indices: tuple[int, ...]
    outcome: Outcome
    time: int

    def to_wire(self) -> list:
        return [self.root, self.blob_id, self.length, self.nonce, list(self.indices), str(self.outcome), self.time]


@dataclass(frozen=True, slots=True)
class AuditLog:
    auditor_id: bytes
    farmer_id: bytes
    entries: tuple[AuditEntry, ...]

    def encode(self) -> bytes:
        return pack(self.auditor_id, self.farmer_id, [entry.to_wire() for entry in self.entries])


def audits_key(farmer_id: bytes) -> bytes:
    return reserved_key(AUDIT_TYPE, _KEY_DOMAIN, farmer_id)


def _entry(raw: object) -> AuditEntry:
    if not (isinstance(raw, list) and len(raw) == 7):
        raise InvalidRecord("an audit entry has 7 fields")
    root, blob_id, length, nonce, indices, outcome, at = raw
    well_formed = (
        well_sized(((root, ROOT_SIZE), (blob_id, BLOB_ID_SIZE), (nonce, NONCE_SIZE)))
        and type(length) is int
        and 0 <= length <= CHUNK_SIZE
        and isinstance(indices, list)
        and 0 < len(indices) <= MAX_INDICES
        and all(type(i) is int and 0 <= i < CHUNK_SIZE for i in indices)
        and isinstance(outcome, str)
        and outcome in set(Outcome)
        and type(at) is int
        and 0 <= at <= time.time() + CLOCK_SKEW
    )
    if not well_formed:
        raise InvalidRecord("malformed audit entry")
    return AuditEntry(root, blob_id, length, nonce, tuple(indices), Outcome(outcome), at)


def decode_audit_log(data: bytes) -> AuditLog:
    auditor_id, farmer_id, entries = unpack(data, "audit log", 3)
    if not well_sized(((auditor_id, NODE_ID_SIZE), (farmer_id, NODE_ID_SIZE))):
        raise InvalidRecord("auditor and farmer ids are 20 bytes")
    if auditor_id == farmer_id:
        raise InvalidRecord("a farmer does not audit itself")
    if not (isinstance(entries, list) and 0 < len(entries) <= MAX_ENTRIES):
        raise InvalidRecord(f"an audit log has 1 to {MAX_ENTRIES} entries")
    return AuditLog(auditor_id, farmer_id, tuple(_entry(raw) for raw in entries))


# A log lives a day after its newest entry (its anchor), however often it is re-sent.
KIND = RecordKind(
    AUDIT_TYPE,
    AUDIT_EXPIRY,
    "an audit log",
    decode_audit_log,
    lambda log: log.auditor_id,
    key_of=lambda log: audits_key(log.farmer_id),
    signer="its auditor",
    anchor=lambda log: max(entry.time for entry in log.entries),
)


def signed_audit_log(auditor: Identity, log: AuditLog, seq: int) -> Value:
    return KIND.sign(auditor, log, seq)


def audit_logs_in(values: list[Value], farmer_id: bytes) -> list[AuditLog]:
    """The audit logs about `farmer_id` among its audit key's (checked) values."""
    return [log for log in KIND.records_in(values) if log.farmer_id == farmer_id]
