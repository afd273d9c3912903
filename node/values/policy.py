"""Whether a value may replace what a replica already holds (OpenDHT's edit policy, made consistent).

* unsigned values can never be edited: the same id with other data is refused, the same bytes refresh;
* signed values can be replaced only by their owner, with a higher seq; an equal seq is accepted only
  for the very same signed bytes (a re-announce); a lower one is a replay and refused;
* an id held by one owner cannot be taken by another owner under the same key;
* a record type may forbid some changes between versions (the store asks its successor rule).

The store adds refusals of its own: quotas, expired versions, and a disk that fails.
"""

from enum import Enum

from dhtmesh.node.values.value import Value


class Verdict(Enum):
    NEW = "new"
    UPDATE = "update"
    REFRESH = "refresh"
    HELD = "held already; not refreshed: only the peer that stored it here, or its owner, may"
    REFUSE_EDIT_UNSIGNED = "unsigned values cannot be edited"
    REFUSE_STALE = "stale seq: a newer version is stored"
    REFUSE_ID_TAKEN = "this value id belongs to another owner"
    REFUSE_NOT_SUCCESSOR = "this record cannot follow the stored version (its type's rules forbid the change)"
    REFUSE_STORE_FULL = "storage quota exceeded"
    REFUSE_KEY_FULL = "too many values under this key"
    REFUSE_PEER_QUOTA = "this peer's storage share is used up"
    REFUSE_KEY_SHARE = "this peer's share of this key's values is used up"
    REFUSE_EXPIRED = "this version expired here: only its storer or owner may put it back"
    REFUSE_DISK_FULL = "no room left on this node's disk"
    REFUSE_STORAGE_ERROR = "this node cannot write to its disk"
    REFUSE_PERMANENT_PUTS = "this client has as many permanent puts on this node as it may"

    @property
    def accepted(self) -> bool:
        return self in (Verdict.NEW, Verdict.UPDATE, Verdict.REFRESH, Verdict.HELD)


def judge_update(current: Value | None, incoming: Value, id_owners: set[bytes]) -> Verdict:
    """`current`: the stored value with the same (owner, id); `id_owners`: owners of that id here."""
    if current is None:
        return Verdict.REFUSE_ID_TAKEN if id_owners - {incoming.owner} else Verdict.NEW
    if current == incoming:
        return Verdict.REFRESH
    if not incoming.signed:
        return Verdict.REFUSE_EDIT_UNSIGNED
    if incoming.seq > current.seq:
        return Verdict.UPDATE
    return Verdict.REFUSE_STALE
