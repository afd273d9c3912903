"""Audit records: what an auditor found when it challenged a farmer, signed by the auditor.

Each auditor keeps one value per farmer it audits, under the farmer's audit key (`audits_key`), with
a value id derived from the auditor's node id; the value lists the auditor's latest audits of that
farmer (chunk, challenge, outcome, time), newest last, at most `MAX_ENTRIES`, each new audit a higher
seq. So a farmer's audits are read with one get, an auditor cannot write in another's name, and a
busy auditor cannot fill the key (one value each; the key is reserved for audit logs). A log lives a
day after its newest entry (`lives_until`), however often it is re-sent.
"""

import time
from dataclasses import dataclass
from enum import StrEnum

import msgpack

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import NODE_ID_SIZE, node_id_from_public_key
from dhtmesh.node.records.blob import BLOB_ID_SIZE
from dhtmesh.node.records.farmer import CLOCK_SKEW, InvalidRecord, farmer_value_id
from dhtmesh.node.records.keys import reserved_key
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ROOT_SIZE
from dhtmesh.node.values.types import AUDIT_EXPIRY, AUDIT_TYPE
from dhtmesh.node.values.value import Value, sign_value

MAX_ENTRIES = 32
NONCE_SIZE = 16
MAX_INDICES = 64
_KEY_DOMAIN = b"dhtmesh/audits/"
_FORMAT = 1


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
        entries = [entry.to_wire() for entry in self.entries]
        return msgpack.packb([_FORMAT, self.auditor_id, self.farmer_id, entries], use_bin_type=True)


def audits_key(farmer_id: bytes) -> bytes:
    return reserved_key(AUDIT_TYPE, _KEY_DOMAIN, farmer_id)


def _entry(raw: object) -> AuditEntry:
    if not (isinstance(raw, list) and len(raw) == 7):
        raise InvalidRecord("an audit entry has 7 fields")
    root, blob_id, length, nonce, indices, outcome, at = raw
    well_formed = (
        isinstance(root, bytes)
        and len(root) == ROOT_SIZE
        and isinstance(blob_id, bytes)
        and len(blob_id) == BLOB_ID_SIZE
        and type(length) is int
        and 0 <= length <= CHUNK_SIZE
        and isinstance(nonce, bytes)
        and len(nonce) == NONCE_SIZE
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
    try:
        fields = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError) as error:
        raise InvalidRecord("audit data is not msgpack") from error
    if not (isinstance(fields, list) and len(fields) == 4 and fields[0] == _FORMAT):
        raise InvalidRecord("audit data is not a format-1 audit log")
    _, auditor_id, farmer_id, entries = fields
    if not all(isinstance(i, bytes) and len(i) == NODE_ID_SIZE for i in (auditor_id, farmer_id)):
        raise InvalidRecord("auditor and farmer ids are 20 bytes")
    if auditor_id == farmer_id:
        raise InvalidRecord("a farmer does not audit itself")
    if not (isinstance(entries, list) and 0 < len(entries) <= MAX_ENTRIES):
        raise InvalidRecord(f"an audit log has 1 to {MAX_ENTRIES} entries")
    return AuditLog(auditor_id, farmer_id, tuple(_entry(raw) for raw in entries))


def check_audit_value(key: bytes, value: Value) -> None:
    """The rule for `AUDIT_TYPE`: signed by the auditor it names, under the audited farmer's key."""
    if not value.signed or value.encrypted:
        raise InvalidRecord("an audit log is signed and in the clear")
    log = decode_audit_log(value.data)
    if node_id_from_public_key(value.owner) != log.auditor_id:
        raise InvalidRecord("an audit log must be signed by its auditor")
    if key != audits_key(log.farmer_id) or value.id != farmer_value_id(log.auditor_id):
        raise InvalidRecord("an audit log must be stored under its farmer's audit key, under its auditor's id")


def lives_until(value: Value) -> float:
    """The latest time a (checked) audit log may be held: a day after its newest entry."""
    return max(entry.time for entry in decode_audit_log(value.data).entries) + AUDIT_EXPIRY


def signed_audit_log(auditor: Identity, log: AuditLog, seq: int) -> Value:
    value = Value(farmer_value_id(log.auditor_id), log.encode(), AUDIT_TYPE, seq=seq)
    return sign_value(auditor, audits_key(log.farmer_id), value)


def audit_logs_in(values: list[Value], farmer_id: bytes) -> list[AuditLog]:
    """The audit logs about `farmer_id` among its audit key's (checked) values."""
    logs = [decode_audit_log(value.data) for value in values if value.type == AUDIT_TYPE]
    return [log for log in logs if log.farmer_id == farmer_id]
