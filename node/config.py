"""Tunables of one node, with OpenDHT/Kademlia defaults; tests shorten the periods."""

from dataclasses import dataclass, field

from dhtmesh.node.routing.diversity import Diversity
from dhtmesh.node.storage.store import Quotas


@dataclass(frozen=True, slots=True)
class NodeConfig:
    k: int = 20
    alpha: int = 3
    # 0: a get merges what all k closest replicas hold, so one up-to-date replica beats a stale
    # majority. N > 0: stop once N replicas (this node's own copy counts) returned values: gets then
    # cost a few RPCs instead of k, but a newer version held by farther replicas only may be missed.
    get_quorum: int = 0
    rpc_timeout: float = 1.0  # per attempt; every call retries once
    max_in_flight: int = 256
    listen_fanout: int = 8  # replicas a listener subscribes to
    subscription_ttl: float = 60.0
    repair_interval: float = 300.0
    bucket_refresh_interval: float = 900.0
    republish_margin: float = 0.2  # re-announce a permanent value when this share of its life is left
    sweep_interval: float = 1.0
    handoff_delay: float = 0.5  # let a newcomer's own join settle before pushing values to it
    # Keys this node may listen to at once (each costs a re-subscription to listen_fanout replicas every
    # subscription_ttl / 3, and a re-read): listeners of a key share one subscription.
    max_listened_keys: int = 256
    total_request_rate: float = 8192.0
    peer_request_rate: float = 1024.0
    quotas: Quotas = field(default_factory=Quotas)
    diversity: Diversity = field(default_factory=Diversity)
    # A lookup takes at most this many not-yet-heard candidates on one peer's word at a time, and stops
    # believing a peer after this many of its introductions failed (see lookups/traverse.py).
    per_referrer: int = 3
