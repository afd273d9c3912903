"""A farmer's reputation, computed from every auditor's signed log of it: passed, failed and missed
audits within the window, how many distinct auditors saw each, and the bytes it proved it holds.

One auditor alone cannot ruin a farmer: a farmer is "failing" only when at least
`CONFIRMING_AUDITORS` distinct auditors' latest verdicts on it are failures, and a chunk it proved
stays counted in its verified bytes unless that many auditors failed it since. A miss (no answer, a
refusal such as "too many requests") is not a failure: anyone flooding a farmer's port can cause one,
and a farmer that is away has lost nothing. Misses make a farmer "unreachable" at worst, never
"failing", and cost it no verified bytes.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from dhtmesh.node.records.audit import AuditEntry, AuditLog, Outcome

CONFIRMING_AUDITORS = 2
WINDOW = 86400  # seconds of audits that count (an audit log value lives as long)


@dataclass(frozen=True, slots=True)
class Reputation:
    passed: int = 0
    failed: int = 0
    missed: int = 0
    passed_by: int = 0  # distinct auditors
    failed_by: int = 0
    missed_by: int = 0
    failing_by: int = 0  # distinct auditors whose latest verdict on this farmer is a failure
    missing_by: int = 0  # distinct auditors whose latest verdict on this farmer is a miss
    passing_by: int = 0  # distinct auditors whose latest verdict on this farmer is a pass
    verified_bytes: int = 0
    last_audit: int | None = None

    @property
    def standing(self) -> str:
        if self.failing_by >= CONFIRMING_AUDITORS:
            return "failing"
        if self.failing_by:
            return "disputed"  # one auditor's word against the others': not enough to condemn
        if self.missing_by >= CONFIRMING_AUDITORS and self.missing_by > self.passing_by:
            return "unreachable"  # most auditors got no answer lately: away, or flooded; nothing proven lost
        return "good" if self.passed else "unaudited"

    def to_json(self) -> dict[str, Any]:
        return {
            "standing": self.standing,
            "passed": self.passed,
            "failed": self.failed,
            "missed": self.missed,
            "auditors": {"passed": self.passed_by, "failed": self.failed_by, "missed": self.missed_by},
            "failing_auditors": self.failing_by,
            "missing_auditors": self.missing_by,
            "verified_bytes": self.verified_bytes,
            "last_audit": self.last_audit,
        }


def reputation(logs: list[AuditLog], now: int, window: int = WINDOW) -> Reputation:
    """What the logs (one per auditor, all about the same farmer) say within `window` seconds of `now`."""
    recent = {log.auditor_id: [e for e in log.entries if e.time >= now - window] for log in logs}
    recent = {auditor: entries for auditor, entries in recent.items() if entries}
    counts = {outcome: 0 for outcome in Outcome}
    seen_by: dict[Outcome, set[bytes]] = defaultdict(set)
    for auditor, entries in recent.items():
        for entry in entries:
            counts[entry.outcome] += 1
            seen_by[entry.outcome].add(auditor)
    latest = {auditor: max(entries, key=lambda e: e.time) for auditor, entries in recent.items()}
    return Reputation(
        passed=counts[Outcome.PASSED],
        failed=counts[Outcome.FAILED],
        missed=counts[Outcome.MISSED],
        passed_by=len(seen_by[Outcome.PASSED]),
        failed_by=len(seen_by[Outcome.FAILED]),
        missed_by=len(seen_by[Outcome.MISSED]),
        failing_by=sum(entry.outcome == Outcome.FAILED for entry in latest.values()),
        missing_by=sum(entry.outcome == Outcome.MISSED for entry in latest.values()),
        passing_by=sum(entry.outcome == Outcome.PASSED for entry in latest.values()),
        verified_bytes=_verified_bytes(recent),
        last_audit=max((entry.time for entry in latest.values()), default=None),
    )


def _verified_bytes(recent: dict[bytes, list[AuditEntry]]) -> int:
    """The lengths of the chunks the farmer proved, less those `CONFIRMING_AUDITORS` failed since
    (misses since do not count: a miss proves nothing lost)."""
    by_chunk: dict[bytes, dict[bytes, AuditEntry]] = defaultdict(dict)  # root -> auditor -> latest entry
    for auditor, entries in recent.items():
        for entry in entries:
            known = by_chunk[entry.root].get(auditor)
            if known is None or entry.time >= known.time:
                by_chunk[entry.root][auditor] = entry
    total = 0
    for latest in by_chunk.values():
        passes = [e for e in latest.values() if e.outcome == Outcome.PASSED]
        if not passes:
            continue
        last_pass = max(e.time for e in passes)
        failures = [e for e in latest.values() if e.outcome == Outcome.FAILED and e.time >= last_pass]
        if len(failures) < CONFIRMING_AUDITORS:
            total += passes[0].length
    return total
