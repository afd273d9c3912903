"""Which chunks an auditor challenges in an epoch: a function of its own node id and the epoch only,
over every chunk of every blob in the mesh. The auditor cannot pick whom it audits (anyone can
recompute its choice), and a farmer cannot steer audits away from the chunks it lost. Every holder of
a chosen chunk is challenged."""

import hashlib
import random

_DOMAIN = b"dhtmesh/audit-choice/v1"


def epoch_of(now: float, period: float) -> int:
    return int(now // period)


def chunk_universe(chunks: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """The chunks an auditor draws from, in the one order everyone computes: distinct and sorted (built
    once per catalog, not per draw: a catalog can list millions of chunks)."""
    return sorted(set(chunks))


def choose_chunks(
    auditor_id: bytes, epoch: int, universe: list[tuple[bytes, int]], count: int
) -> list[tuple[bytes, int]]:
    """`count` distinct `(blob id, chunk index)` of `universe` (from `chunk_universe`), as the auditor
    must pick them this epoch."""
    seed = hashlib.sha256(_DOMAIN + auditor_id + epoch.to_bytes(8, "big")).digest()
    return random.Random(seed).sample(universe, min(count, len(universe)))
