"""Merkle trees over stored data: a chunk is cut into fixed-size blocks under a tree whose root names
the chunk, and a blob's id is the root of a tree over its chunks (each leaf a chunk's root and
length). A holder proves it has a block by returning it with its inclusion path; the verifier needs
only the root.

The trees are RFC 9162's (leaf and node hashes domain-separated, so a node cannot pass for a leaf),
built and checked by `pymerkle`; a path is checked against the block's index and the tree's size, so
a proof for one block cannot answer a challenge for another. A tree keeps its hashes only, never the
blocks (`DigestTree`), so that a holder can keep the trees of the chunks it proves.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from pymerkle import BaseMerkleTree, InclusionProof, InvalidProof, verify_inclusion
from pymerkle.hasher import MerkleHasher

from dhtmesh.crypto.errors import CryptoError

BLOCK_SIZE = 4096
CHUNK_SIZE = 1024 * BLOCK_SIZE  # 4 MiB: the most a chunk, and so a leaf of a blob's tree, holds
HASH = "sha256"
ROOT_SIZE = 32  # a root names a chunk, and a blob (its id)


class BadProof(CryptoError, ValueError):
    """A block that is not the one at that index under that root, or a malformed proof."""


@dataclass(frozen=True, slots=True)
class BlockProof:
    """Block `index` (from 0) of a tree of `size` leaves, and its inclusion path from leaf to root."""

    index: int
    size: int
    block: bytes
    rule: list[int]
    path: list[bytes]

    def to_wire(self) -> list:
        return [self.index, self.size, self.block, self.rule, self.path]


def blocks_of(data: bytes, block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    """The blocks of `data`; the last may be short, empty data is one empty block."""
    if not data:
        yield b""
    for start in range(0, len(data), block_size):
        yield data[start : start + block_size]


class DigestTree(BaseMerkleTree):
    """An RFC 9162 tree that keeps every level of hashes and nothing else: ~150 KiB for a 4 MiB chunk,
    where pymerkle's `InmemoryTree` keeps the blocks and a node object per hash (~4.4 MiB). A proof
    reads its path off the levels instead of hashing subtrees again (~6x faster)."""

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]  # leaf digests, then each level of perfect subtrees
        super().__init__(HASH)

    def _encode_entry(self, data: bytes) -> bytes:
        return data

    def _store_leaf(self, data: bytes, digest: bytes) -> int:
        del self._levels[1:]  # stacked again on the next read
        self._levels[0].append(digest)
        return len(self._levels[0])

    def _get_leaf(self, index: int) -> bytes:
        return self._levels[0][index - 1]

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        return self._levels[0][offset : offset + width]

    def _get_size(self) -> int:
        return len(self._levels[0])

    def _get_subroot(self, offset: int, width: int) -> bytes:
        """The root of the perfect subtree of `width` (a power of two) leaves from `offset`."""
        if offset % width:  # never asked by RFC 9162's layouts; computed rather than misread
            return self._get_subroot_uncached(offset, width)
        if len(self._levels) == 1:
            self._stack()
        depth = width.bit_length() - 1
        return self._levels[depth][offset >> depth]

    def _stack(self) -> None:
        level = self._levels[0]
        while len(level) > 1:
            level = [self.hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self._levels.append(level)


def tree_over(leaves: Iterator[bytes] | list[bytes]) -> DigestTree:
    tree = DigestTree()
    for leaf in leaves:
        tree.append_entry(leaf)
    return tree


def root_of(leaves: Iterator[bytes] | list[bytes]) -> bytes:
    return tree_over(leaves).get_root()


def chunk_root(data: bytes) -> bytes:
    """The id of a chunk: the root of the tree over its blocks."""
    return root_of(blocks_of(data))


def blob_root(chunks: list[tuple[bytes, int]]) -> bytes:
    """The id of a blob: the root of the tree over its chunks, in order, each leaf a chunk's root and
    its length in bytes. The lengths are bound too, so that one id names one layout: nobody can publish
    the same chunks under the same id with other lengths, which would make auditors challenge blocks a
    chunk does not have and readers cut ranges in the wrong places."""
    if not chunks:
        raise ValueError("a blob has at least one chunk")
    return root_of(root + length.to_bytes(8, "big") for root, length in chunks)


def prove_blocks(
    tree: BaseMerkleTree, leaves: Sequence[bytes] | Mapping[int, bytes], indices: list[int]
) -> list[BlockProof]:
    """Proofs for the blocks at `indices` (from 0) of `tree`; `leaves[index]` is block `index` (every
    block, or only the challenged ones)."""
    size = tree.get_size()
    proofs = []
    for index in indices:
        proof = tree.prove_inclusion(index + 1)
        proofs.append(BlockProof(index, size, leaves[index], list(proof.rule), list(proof.path)))
    return proofs


def verify_block(root: bytes, proof: BlockProof, index: int, size: int) -> None:
    """Raise `BadProof` unless `proof.block` is leaf `index` of the tree of `size` leaves under `root`."""
    if (proof.index, proof.size) != (index, size):
        raise BadProof(f"a proof for block {proof.index} of {proof.size}, not {index} of {size}")
    inclusion = InclusionProof(HASH, True, size, index + 1, proof.rule, proof.path)
    leaf_hash = MerkleHasher(HASH, security=True).hash_buff(proof.block)
    try:
        verify_inclusion(leaf_hash, root, inclusion, index=index + 1, size=size, algorithm=HASH)
    except (InvalidProof, TypeError, ValueError) as error:
        raise BadProof(f"block {index}: {error}") from error


def proof_from_wire(raw: object) -> BlockProof:
    """A proof from a peer, every type checked; raises `BadProof`."""
    if not (isinstance(raw, list) and len(raw) == 5):
        raise BadProof("a block proof is [index, size, block, rule, path]")
    index, size, block, rule, path = raw
    well_typed = (
        isinstance(index, int)
        and isinstance(size, int)
        and isinstance(block, bytes)
        and isinstance(rule, list)
        and all(bit in (0, 1) and isinstance(bit, int) for bit in rule)
        and isinstance(path, list)
        and all(isinstance(step, bytes) for step in path)
    )
    if not well_typed or len(block) > BLOCK_SIZE or len(path) > 130:
        raise BadProof("malformed block proof")
    return BlockProof(index, size, block, rule, path)
