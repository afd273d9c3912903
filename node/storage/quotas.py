"""What the value store may hold and who is charged for it: the limits (`Quotas`), the origins a value
is charged to (a peer host, this node's own puts, a stock peer's host), and the running charges per
origin and per subnet that every put is checked against (`Ledger`), kept in memory so that a quota
check never scans the table."""

from collections import Counter
from dataclasses import dataclass

from dhtmesh.node.values.policy import Verdict
from dhtmesh.node.wire.netgroup import subnet_of
from dhtmesh.node.wire.ratelimit import tally

LOCAL_ORIGIN = "local"
STOCK_PREFIX = "stock "
ROW_OVERHEAD = 64  # bytes charged per value beyond its payload, for keys and bookkeeping


@dataclass(frozen=True, slots=True)
class Quotas:
    """OpenDHT's defaults: 64 MiB stored for others, each peer host at most 1/8 of it and each subnet
    (`netgroup.subnet_of`) 1/4; a cap per key, of which one peer host may fill at most `key_share` (so
    strangers cannot crowd out the others)."""

    max_remote_bytes: int = 64 * 1024 * 1024
    max_local_bytes: int = 64 * 1024 * 1024
    max_values_per_key: int = 1024
    peer_share: float = 1 / 8
    subnet_share: float = 1 / 4
    key_share: float = 1 / 4
    max_tombstones: int = 100_000  # ~10 MB: a tombstone is charged to no one, so their number is capped
    # Permanent puts the node keeps for proxy clients: each is looked at every second and re-announced
    # every few minutes for a day, so one client (an address, as for listen streams) keeps a few, and
    # all of them together a bounded number. The node's own are not counted.
    permanent_puts_per_client: int = 64
    permanent_puts_of_clients: int = 4096


def stock_origin(host: str) -> str:
    """The origin a stock peer's store is charged to (all stock origins share one peer's budget and
    one peer's share of a key: a stock peer's address is never proven, so it could be anyone's)."""
    return STOCK_PREFIX + host


def stock_sender(host: str) -> bytes:
    """Who a stock peer is, for refreshing what it stored: its host (it has no proven id)."""
    return (STOCK_PREFIX + host).encode()


class Ledger:
    """Bytes and values charged per origin, and remote hosts' bytes per subnet."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas
        self.charges: Counter[str] = Counter()
        self.values: Counter[str] = Counter()
        self._subnet_charges: Counter[str] = Counter()
        self.remote_bytes = 0  # the sum of the charges of every origin but this node
        self.stock_bytes = 0  # the part of it stock peers are charged

    def account(self, origin: str, charge: int, count: int) -> None:
        """Charge `origin` `charge` bytes for `count` values (negative: release them)."""
        self.charges[origin] += charge
        self.values[origin] += count
        if origin != LOCAL_ORIGIN:
            self.remote_bytes += charge
        if origin.startswith(STOCK_PREFIX):
            self.stock_bytes += charge
        elif origin != LOCAL_ORIGIN:
            tally(self._subnet_charges, subnet_of(origin), charge)
        if not self.values[origin]:
            del self.charges[origin], self.values[origin]  # origins come and go: keep only live ones

    def refusal(self, origin: str, charge: int, old: tuple[str, int] | None) -> Verdict | None:
        """Whether charging `charge` to `origin` (releasing the replaced row's charge) breaks a quota."""
        old_origin, old_charge = old if old else ("", 0)
        growth = charge - (old_charge if old_origin == origin else 0)
        if origin == LOCAL_ORIGIN:
            if self.charges[LOCAL_ORIGIN] + growth > self.quotas.max_local_bytes:
                return Verdict.REFUSE_STORE_FULL
            return None
        released = old_charge if old and old_origin != LOCAL_ORIGIN else 0
        if self.remote_bytes + charge - released > self.quotas.max_remote_bytes:
            return Verdict.REFUSE_STORE_FULL
        share = self.quotas.max_remote_bytes * self.quotas.peer_share
        if origin.startswith(STOCK_PREFIX):
            return Verdict.REFUSE_PEER_QUOTA if self.stock_bytes + growth > share else None
        if self.charges[origin] + growth > share:
            return Verdict.REFUSE_PEER_QUOTA
        subnet_share = self.quotas.max_remote_bytes * max(self.quotas.subnet_share, self.quotas.peer_share)
        if self._subnet_charges[subnet_of(origin)] + growth > subnet_share:
            return Verdict.REFUSE_PEER_QUOTA
        return None

    def counts(self) -> dict[str, int]:
        """What `/node/info` says of the store: values and bytes, in all and of this node's own."""
        return {
            "storage_values": sum(self.values.values()),
            "storage_size": sum(self.charges.values()),
            "local_storage_values": self.values[LOCAL_ORIGIN],
            "local_storage_size": self.charges[LOCAL_ORIGIN],
        }
