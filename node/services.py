"""The composition root of a node's services: each one built once, from one `FarmerRegistry`, started and
stopped in order, its long-lived loops run by one `Supervisor` (named, logged, counted, restarted).

`dhtmesh run`, the proxy (`create_app`), the tests and the benchmarks build a node's services here and
nowhere else, so a node has one registry (16 directory listeners, not one set per user of it) and one
placer, reader and uploader, and one book of jobs. A farmer's part (its chunk store, service, keeper,
agent and auditor) is added by `Farming`; a worker's (its sandboxes and the loop that takes slices), by
`Working`.
"""

import logging
import socket
from dataclasses import dataclass

from dhtmesh.node.accounts.service import Accounts
from dhtmesh.node.audits.auditor import DEFAULT_AUDIT_PERIOD, Auditor
from dhtmesh.node.audits.book import ReputationBook
from dhtmesh.node.blobs.download import BlobReader
from dhtmesh.node.blobs.holder import DEFAULT_PENDING_TIMEOUT, ChunkKeeper
from dhtmesh.node.blobs.placement import Placer
from dhtmesh.node.blobs.upload import Uploader
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.jobs.sandbox import SandboxPool
from dhtmesh.node.jobs.service import Jobs
from dhtmesh.node.jobs.standing import Standings
from dhtmesh.node.jobs.worker import Worker
from dhtmesh.node.records.agent import FarmerAgent
from dhtmesh.node.records.farmer_events import MAX_PING
from dhtmesh.node.records.registry import FarmerRegistry
from dhtmesh.node.storage.chunks import ChunkStore
from dhtmesh.node.streams.service import Streams
from dhtmesh.node.tasks import Loop, Supervisor
from dhtmesh.node.transfer.chunk_client import ChunkClient
from dhtmesh.node.transfer.chunk_service import ChunkService
from dhtmesh.node.transfer.port import Port
from dhtmesh.node.transfer.port_limits import MAX_CONNECTIONS

log = logging.getLogger(__name__)

DEFAULT_SLICE_MEMORY = 256  # MiB of V8 heap per sandbox
DEFAULT_SLICE_MS = 30_000  # the longest a slice may run on this worker, whatever its job asks


@dataclass(frozen=True)
class Working:
    """What makes a node a worker: how many sandboxes compute slices at once, and their limits."""

    sandboxes: int = 1
    slice_memory_mib: int = DEFAULT_SLICE_MEMORY
    max_slice_ms: int = DEFAULT_SLICE_MS


@dataclass(frozen=True)
class Farming:
    """What makes a node a farmer: the store its chunks go to, and how it reports and audits."""

    chunks: ChunkStore
    payout: str | None = None
    height: int | None = None
    ping_interval: float = MAX_PING
    ip: str = ""  # the address its record states ("": the one peers see)
    audit_period: float = DEFAULT_AUDIT_PERIOD
    pending_timeout: float = DEFAULT_PENDING_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


class Services:
    """A node's services. `start` opens the farmer's chunk port; `run` starts the background loops (once
    the node may announce itself); `stop` ends them all, loops first, then the services they use."""

    def __init__(self, node: DhtNode, farming: Farming | None = None, working: Working | None = None) -> None:
        self.node = node
        self.loops = Supervisor(node.counters)
        self.registry = FarmerRegistry(node)
        self.reputation = ReputationBook(node, self.registry)
        self.placer = Placer(node, self.registry, ChunkClient(node.identity))
        self.uploader = Uploader(self.placer)
        self.reader = BlobReader(self.placer)
        self.jobs = Jobs(node, SandboxPool(size=1))  # its sandbox only compiles work functions, at deploy
        self.standings = Standings(node, self.jobs.book)
        self.accounts = Accounts(node)
        self.streams = Streams(node, self.accounts)
        self.worker: Worker | None = None
        self.sandboxes: SandboxPool | None = None
        if working is not None:
            self.sandboxes = SandboxPool(working.sandboxes, working.slice_memory_mib, working.max_slice_ms)
            self.worker = Worker(node, self.jobs.book, self.sandboxes, working.sandboxes)
        self.farming = farming
        self.chunks: ChunkService | None = None
        self.keeper: ChunkKeeper | None = None
        if farming is not None:
            self.keeper = ChunkKeeper(node, farming.chunks, farming.pending_timeout)
            self.chunks = ChunkService(
                node.identity,
                farming.chunks,
                self.keeper.keep,
                may_audit=self.registry.is_registered,  # only registered farmers challenge this node
                counters=node.counters,
            )
        self.port = Port(
            node.counters,
            self.streams.replica.serve,
            self.chunks,
            farming.max_connections if farming is not None else MAX_CONNECTIONS,
        )

    async def start(self, stream_socket: socket.socket | None = None) -> None:
        """Serve the node's TCP port (the streams' replicas, and a farmer's chunks) on the bound
        `stream_socket`, else on the node's host and UDP port (a free one if that is taken)."""
        if stream_socket is not None:
            await self.port.start(sock=stream_socket)
            return
        host, port = self.node.address[:2]
        try:
            await self.port.start(host, port)
        except OSError:
            log.warning("TCP port %s on %s is taken: the node's streams listen on a free port", port, host)
            await self.port.start(host, 0)

    def run(self, *extra: tuple[str, Loop]) -> None:
        """Start the farmer's loops, and the caller's `extra` ones (name, loop), under the supervisor."""
        for name, loop in extra:
            self.loops.start(name, loop)
        self.loops.start("stream_retention", self.streams.homes.trim_periodically)
        self.loops.start("stream_checkpoint", self.streams.homes.checkpoint_periodically)
        if self.worker is not None and self.sandboxes is not None:
            self.loops.start("sandbox_warm", self.sandboxes.warm)  # ends once its processes are up
            for slot in range(self.worker.slots):
                self.loops.start("job_slot", self.worker.slot, str(slot))
        if self.farming is None or self.keeper is None:
            return
        farming = self.farming
        agent = FarmerAgent(self.registry, farming.payout, farming.height, farming.ping_interval, farming.ip)
        auditor = Auditor(self.placer, self.reader, farming.chunks, farming.audit_period)
        self.loops.start("farmer_agent", agent.run)
        self.loops.start("pending_sweep", self.keeper.sweep_pending)
        self.loops.start("auditor", auditor.run)

    async def stop(self) -> None:
        await self.loops.close()
        if self.worker is not None:
            await self.worker.close()
        if self.sandboxes is not None:
            await self.sandboxes.close()
        await self.port.stop()  # first: no peer's request may reach a stopped service
        await self.streams.close()
        await self.accounts.close()
        await self.jobs.close()
        await self.uploader.close()
        await self.registry.close()
        if self.chunks is not None:
            self.chunks.chunks.close()
