"""The Merkle trees a holder proves its chunks with: built once per chunk, in a worker thread, and
kept for the most recently challenged chunks, so that a burst of challenges costs a few block reads
each, not a rebuild over 4 MiB (~10 ms of hashing) on the node's event loop.

Blocks are read from disk at each challenge, never kept: a chunk that rots or is lost after its tree
was built fails its next audit all the same.
"""

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from dhtmesh.crypto.merkle import BlockProof, DigestTree, blocks_of, prove_blocks, tree_over
from dhtmesh.node.storage.chunks import ChunkStore

TREES_KEPT = 64  # ~150 KiB each (`DigestTree`): ~10 MiB for the chunks audited lately


class ProofTrees:
    def __init__(
        self, chunks: ChunkStore, capacity: int = TREES_KEPT, on_build: Callable[[], None] = lambda: None
    ) -> None:
        self._chunks = chunks
        self._capacity = capacity
        self._on_build = on_build  # told of every tree built (the service counts them)
        self._kept: OrderedDict[bytes, DigestTree] = OrderedDict()
        self._building: dict[bytes, asyncio.Task[DigestTree | None]] = {}

    async def prove(self, root: bytes, indices: list[int]) -> list[BlockProof] | None:
        """Proofs of blocks `indices` of chunk `root` as stored now; None if it is not here (or shorter
        on disk than those blocks: damaged, so not held either)."""
        tree = await self._tree(root)
        if tree is None or max(indices) >= tree.get_size():
            return None
        blocks = await self._chunks.read_blocks(root, indices)
        if blocks is None:
            return None
        return await asyncio.to_thread(prove_blocks, tree, blocks, indices)

    async def _tree(self, root: bytes) -> DigestTree | None:
        tree = self._kept.get(root)
        if tree is not None:
            self._kept.move_to_end(root)
            return tree
        building = self._building.get(root)
        if building is None:  # challenges of one chunk at once share one build
            building = asyncio.get_running_loop().create_task(self._build(root))
            self._building[root] = building
            building.add_done_callback(lambda _: self._building.pop(root, None))
        return await asyncio.shield(building)  # a challenger that gives up does not waste the build

    async def _build(self, root: bytes) -> DigestTree | None:
        data = await self._chunks.get(root)
        if data is None:
            return None
        tree, built_root = await asyncio.to_thread(_tree_and_root, data)
        self._on_build()
        if built_root == root:  # a tree over damaged bytes is used once, never kept past a repair
            self._kept[root] = tree
            if len(self._kept) > self._capacity:
                self._kept.popitem(last=False)
        return tree


def _tree_and_root(data: bytes) -> tuple[DigestTree, bytes]:
    tree = tree_over(blocks_of(data))
    return tree, tree.get_root()  # the root stacks every level, here rather than on the loop
