"""Merkle trees over stored data: a chunk is cut into fixed-size blocks under a tree whose root names
the chunk, and a blob's id is the root of a tree over its chunks (each leaf a chunk's root and
length). A holder proves it has a block by returning it with its inclusion path; the verifier needs
only the root.

The trees are RFC 9162's (leaf and node hashes domain-separated, so a node cannot pass for a leaf),
built and checked by `pymerkle`; a path is checked against the block's index and the tree's size, so
a proof for one block cannot answer a challenge for another.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from pymerkle import InclusionProof, InmemoryTree, InvalidProof, verify_inclusion
from pymerkle.hasher import MerkleHasher

BLOCK_SIZE = 4096
HASH = "sha256"


class BadProof(ValueError):
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


def tree_over(leaves: Iterator[bytes] | list[bytes]) -> InmemoryTree:
    tree = InmemoryTree(algorithm=HASH)
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


def prove_blocks(tree: InmemoryTree, leaves: list[bytes], indices: list[int]) -> list[BlockProof]:
    """Proofs for the blocks at `indices` (from 0) of the tree built over `leaves`."""
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
