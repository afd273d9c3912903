"""Merkle trees over chunks: a block proves itself against the chunk's root at its own index only."""

import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from dhtmesh.crypto.merkle import (
    BLOCK_SIZE,
    BadProof,
    blob_root,
    blocks_of,
    chunk_root,
    proof_from_wire,
    prove_blocks,
    tree_over,
    verify_block,
)


def test_every_block_of_a_chunk_proves_itself_against_the_root() -> None:
    data = os.urandom(BLOCK_SIZE * 37 + 123)
    leaves = list(blocks_of(data))
    tree = tree_over(leaves)
    root = chunk_root(data)
    assert tree.get_root() == root and len(leaves) == 38
    for proof in prove_blocks(tree, leaves, list(range(len(leaves)))):
        verify_block(root, proof_from_wire(proof.to_wire()), proof.index, len(leaves))


@pytest.mark.parametrize("size", [*range(1, 70), 511, 512, 513, 1023, 1024, 1025])
def test_the_compact_tree_has_pymerkles_root_and_paths_for_every_size(size: int) -> None:
    """A holder keeps `DigestTree`s (hashes only): each root and path must be the reference tree's."""
    leaves = [os.urandom(index % 50) for index in range(size)]
    compact, reference = tree_over(leaves), InmemoryTree(algorithm="sha256")
    for leaf in leaves:
        reference.append_entry(leaf)
    assert compact.get_root() == reference.get_root()
    for index in {0, size // 3, size // 2, size - 1}:
        ours, theirs = compact.prove_inclusion(index + 1), reference.prove_inclusion(index + 1)
        assert (ours.rule, ours.path) == (theirs.rule, theirs.path)


def forged_cases(data: bytes) -> dict[str, tuple]:
    leaves = list(blocks_of(data))
    root = chunk_root(data)
    proof = prove_blocks(tree_over(leaves), leaves, [5])[0]
    other = prove_blocks(tree_over(leaves), leaves, [6])[0]
    return {
        "made-up block": (root, replace(proof, block=os.urandom(BLOCK_SIZE)), 5),
        "another block's proof for this index": (root, replace(other, index=5), 5),
        "another block's proof, honestly labelled": (root, other, 5),
        "a root of other data": (chunk_root(os.urandom(len(data))), proof, 5),
        "a path with a step flipped": (root, replace(proof, path=[proof.path[0], bytes(32), *proof.path[2:]]), 5),
        "a smaller tree claimed": (root, replace(proof, size=8), 5),
    }


@pytest.mark.parametrize("case", list(forged_cases(bytes(BLOCK_SIZE * 20))))
def test_a_forged_or_misplaced_block_is_refused(case: str) -> None:
    root, proof, index = forged_cases(os.urandom(BLOCK_SIZE * 20))[case]
    with pytest.raises(BadProof):
        verify_block(root, proof, index, 20)


def test_a_blob_id_depends_on_every_chunk_their_order_and_lengths() -> None:
    chunks = [(chunk_root(os.urandom(100)), 100) for _ in range(3)]
    assert blob_root(chunks) != blob_root(chunks[::-1])
    assert blob_root(chunks) != blob_root(chunks[:2])
    assert blob_root(chunks) != blob_root([*chunks[:2], (chunks[2][0], 99)])
    with pytest.raises(ValueError):
        blob_root([])


@settings(max_examples=200)
@given(st.recursive(st.none() | st.integers() | st.binary(max_size=40), lambda inner: st.lists(inner, max_size=6)))
def test_garbage_from_a_peer_is_refused_as_a_bad_proof(raw: object) -> None:
    root = chunk_root(b"data")
    try:
        proof = proof_from_wire(raw)
    except BadProof:
        return
    with pytest.raises(BadProof):
        verify_block(root, proof, 0, 1)
