"""How much of a farmer's chunk port one client may use: connections held at once and chunk bodies
in memory at once (puts being read, gets being sent), per client address and in total; and how often
proofs may be asked, per address, per auditor and in all.

Limits count per host (`netgroup.host_of`): an IPv4 address, or an IPv6 /64, since one host is
handed a whole /64 and a limit per IPv6 address would be no limit. Every limit refuses at once
rather than queueing, so that a flood costs this node a few bytes per connection and honest peers
pass over to another holder (for an auditor, a refused challenge is a miss, not a failure).
"""

import time

from dhtmesh.node.wire.ratelimit import Buckets, TokenBucket

# Connections held at once. An honest node holds at most 8 per holder per chunk client (`ChunkClient`),
# two clients per node (its proxy's and its auditor's): 64 leaves room for a few nodes behind one
# address. The total is also kept to a quarter of the process's descriptors (`connection_cap`).
MAX_CONNECTIONS_PER_ADDRESS = 64
MAX_CONNECTIONS = 512
HEADER_TIMEOUT = 5.0  # seconds for a connection's first header (a few hundred bytes): an idle one holds a descriptor
# Chunk bodies in memory at once, 4 MiB each: 128 MiB at most, whoever sends them. One node's two
# clients fill an address's share (8 each): a few nodes behind one address pass one another over.
MAX_TRANSFERS_PER_ADDRESS = 16
MAX_TRANSFERS = 32
# Chunks being sent at once, apart from puts (a get needs no signature: two addresses holding every
# slot with gets they never read made honest puts and reads pass this farmer over). A reader fetches
# a chunk or two ahead; a send that cannot drain within `SEND_TIMEOUT` is cut.
MAX_READS_PER_ADDRESS = 4
MAX_READS = 32
SEND_TIMEOUT = 10.0  # 4 MiB at 400 KiB/s
# Proofs (rate per second, burst). An auditor challenges a holder once per audit period (at least
# 1 s) for the one chunk it audits; a proof costs a tree build (~10 ms of hashing) unless kept.
PROVES_PER_AUDITOR = (2.0, 5.0)
PROVES_PER_ADDRESS = (10.0, 20.0)
PROVES_IN_ALL = (20.0, 40.0)


def connection_cap(descriptors: int) -> int:
    """The total connection cap for a process allowed `descriptors` open files: at most a quarter of
    them, leaving the rest to the proxy's clients, the node's sockets, SQLite and outgoing streams."""
    return max(1, min(MAX_CONNECTIONS, descriptors // 4))


class ProveRates:
    """How often proofs may be asked. The address's budget is taken before the signature is checked
    (it bounds the checking too); the auditor's and the node's only for a registered auditor's signed
    challenge, so that nobody else can spend what auditors need."""

    def __init__(self) -> None:
        self._addresses = Buckets(*PROVES_PER_ADDRESS)
        self._auditors = Buckets(*PROVES_PER_AUDITOR)
        self._all = TokenBucket(*PROVES_IN_ALL)

    def allow_address(self, group: str) -> bool:
        return self._addresses.take(group)

    def allow_auditor(self, auditor_id: bytes) -> bool:
        return self._auditors.take(auditor_id) and self._all.take(time.monotonic())
