"""The audit loop a farmer runs: every period (an epoch), challenge every holder of the chunks this
auditor must pick (`choice`), publish each outcome in its signed log (`journal`), and repair the chunks
left with fewer than `replicas` holders that proved themselves.

A challenge asks for random blocks of the chunk with a fresh nonce; the answer must come within the
stream deadline, be signed by the holder, and every block must prove itself against the root from the
blob's manifest (`ChunkClient.audit`). The auditor never challenges itself; its own copy counts as a
healthy replica when its bytes still hash to the root.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dhtmesh.crypto.merkle import chunk_root
from dhtmesh.node.audits.choice import choose_chunks, chunk_universe, epoch_of
from dhtmesh.node.audits.journal import AuditJournal
from dhtmesh.node.blobs.download import BlobReader
from dhtmesh.node.blobs.placement import Placer
from dhtmesh.node.dht import PutRefused
from dhtmesh.node.records.audit import AuditEntry, Outcome
from dhtmesh.node.records.blob import BLOBS, Manifest, manifests_in
from dhtmesh.node.records.directory import read_directory
from dhtmesh.node.storage.chunks import ChunkStore
from dhtmesh.node.transfer.chunk_client import (
    Challenge,
    HolderFailed,
    HolderRefused,
    HolderUnreachable,
    new_challenge,
)
from dhtmesh.node.transfer.chunk_service import NOT_HELD
from dhtmesh.node.values.value import InvalidValue

log = logging.getLogger(__name__)

DEFAULT_AUDIT_PERIOD = 60.0
CHUNKS_PER_ROUND = 1
CHALLENGED_BLOCKS = 8
CATALOG_REFRESH_PERIODS = 10  # the list of blobs is read again every this many epochs


@dataclass(frozen=True, slots=True)
class ChunkAudit:
    """What one round found about one chunk."""

    blob_id: bytes
    index: int
    outcomes: dict[bytes, Outcome]  # holder -> outcome
    repaired_to: list[bytes]


class Auditor:
    def __init__(
        self,
        placer: Placer,
        reader: BlobReader,
        own_chunks: ChunkStore | None,
        period: float = DEFAULT_AUDIT_PERIOD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._placer = placer
        self._node = placer.node
        self._reader = reader
        self._own_chunks = own_chunks
        self._period = period
        self._clock = clock
        self._journal = AuditJournal(placer.node)
        self._manifests: dict[bytes, Manifest] = {}
        self._universe: list[tuple[bytes, int]] = []  # every (blob id, chunk index), as choice draws
        self._catalog_epoch: int | None = None

    async def run(self) -> None:
        """One round per epoch, at the epoch's start, until cancelled; a failed round is logged."""
        while True:
            now = self._clock()
            await asyncio.sleep((epoch_of(now, self._period) + 1) * self._period - now)
            try:
                await self.audit_round(epoch_of(self._clock(), self._period))
            except Exception:
                log.exception("audit round failed")

    async def audit_round(self, epoch: int) -> list[ChunkAudit]:
        await self._catalog(epoch)
        chosen = choose_chunks(self._node.node_id, epoch, self._universe, CHUNKS_PER_ROUND)
        return [await self.audit_chunk(self._manifests[blob_id], index) for blob_id, index in chosen]

    async def _catalog(self, epoch: int) -> None:
        """Every blob's manifest, read from the directory shards every few epochs (each epoch while none),
        and the chunks they list, sorted once per read."""
        stale = self._catalog_epoch is None or epoch - self._catalog_epoch >= CATALOG_REFRESH_PERIODS
        if stale or not self._manifests:
            manifests = manifests_in(await read_directory(self._node, BLOBS))
            self._manifests = {manifest.blob_id: manifest for manifest in manifests}
            chunks = [(blob_id, i) for blob_id, m in self._manifests.items() for i in range(len(m.chunk_roots))]
            self._universe = chunk_universe(chunks)
            self._catalog_epoch = epoch

    async def audit_chunk(self, manifest: Manifest, index: int) -> ChunkAudit:
        root, length = manifest.chunk_roots[index], manifest.chunk_lengths[index]
        holders = await self._reader.holders(root, length)
        others = [holder for holder in holders if holder != self._node.node_id]
        blocks = manifest.block_count(index)
        results = await asyncio.gather(*(self._challenge(holder, root, blocks) for holder in others))
        outcomes = {}
        for holder, (challenge, outcome) in zip(others, results, strict=True):
            outcomes[holder] = outcome
            entry = AuditEntry(
                root, manifest.blob_id, length, challenge.nonce, tuple(challenge.indices), outcome, int(self._clock())
            )
            self._node.counters.add(f"audits_{outcome}")
            try:
                await self._journal.record(holder, entry)
            except (PutRefused, InvalidValue) as error:
                log.warning("audit log of %s refused: %s", holder.hex(), error)
        healthy = [holder for holder, outcome in outcomes.items() if outcome == Outcome.PASSED]
        own_copy = await self._own_copy(root)
        if own_copy is not None and self._node.node_id in holders:
            healthy.append(self._node.node_id)
        repaired = await self._repair(manifest, index, healthy, set(holders), own_copy)
        return ChunkAudit(manifest.blob_id, index, outcomes, repaired)

    async def _challenge(self, holder: bytes, root: bytes, blocks: int) -> tuple[Challenge, Outcome]:
        challenge = new_challenge(root, blocks, CHALLENGED_BLOCKS)
        address = await self._placer.address_of(holder)
        if address is None:
            return challenge, Outcome.MISSED
        try:
            await self._placer.client.audit(address, holder, challenge)
        except HolderUnreachable:
            return challenge, Outcome.MISSED
        except HolderRefused as error:
            # "Not held" from a farmer whose signed holding says it keeps the chunk is a failure; any
            # other refusal (busy, rate-limited: maybe someone flooding it) is only a miss.
            return challenge, Outcome.FAILED if error.reason == NOT_HELD else Outcome.MISSED
        except HolderFailed as error:
            log.info("farmer %s failed an audit of chunk %s: %s", holder.hex(), root.hex(), error)
            return challenge, Outcome.FAILED
        return challenge, Outcome.PASSED

    async def _own_copy(self, root: bytes) -> bytes | None:
        """This node's copy of the chunk, if its bytes still hash to the root (hashed off the loop)."""
        data = await self._own_chunks.get(root) if self._own_chunks is not None else None
        if data is None or await asyncio.to_thread(chunk_root, data) != root:
            return None
        return data

    async def _repair(
        self, manifest: Manifest, index: int, healthy: list[bytes], holders: set[bytes], own_copy: bytes | None
    ) -> list[bytes]:
        """Copy the chunk to new farmers until `replicas` holders are healthy; returns the new holders."""
        missing = self._placer.replicas - len(healthy)
        if missing <= 0 or not healthy:
            return []  # nothing to do, or no proven copy to repair from (a later round may find one)
        root = manifest.chunk_roots[index]
        data = own_copy
        for holder in healthy:
            if data is not None:
                break
            address = await self._placer.address_of(holder)
            try:
                data = await self._placer.client.get(address, root) if address is not None else None
            except HolderFailed:
                continue
        if data is None:
            return []
        placed = await self._placer.place(root, data, await self._placer.farmers(), holders, missing)
        kept = await self._placer.keep(placed, root, manifest.blob_id)
        if kept:
            self._node.counters.add("chunks_repaired", len(kept))
            log.info("chunk %s repaired onto %s", root.hex(), ", ".join(h.hex() for h in kept))
        return kept
