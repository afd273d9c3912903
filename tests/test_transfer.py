"""Chunk transfers and audits over real TCP streams: a chunk round-trips byte for byte, a wrong hash is
refused, and a holder that lost, altered or made up data, or replays an old answer, fails its audit.
(What the port refuses before any work — unsigned puts and challenges, floods — is in test_chunk_port.)"""

import asyncio
import os
import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack
import pytest

from dhtmesh.crypto import Identity
from dhtmesh.crypto.merkle import BLOCK_SIZE, chunk_root
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.storage.chunks import ChunkStore
from dhtmesh.node.transfer.chunk_client import ChunkClient, HolderFailed, check_answer, new_challenge
from dhtmesh.node.transfer.chunk_service import ChunkService, challenge_binding, chunk_path, prove_path
from dhtmesh.node.transfer.framing import announce, frame
from dhtmesh.testing import NodeProcess

from support import audit_once_registered, chunk_port

CHUNK = BLOCK_SIZE * 300 + 77
AUDITOR = Identity.generate()  # the one node the holders below take challenges from


async def only_the_auditor(node_id: bytes) -> bool:
    return node_id == AUDITOR.node_id


@dataclass
class Holder:
    identity: Identity
    service: ChunkService
    address: tuple[str, int]

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id


@pytest.fixture
async def holders(tmp_path: Path) -> AsyncIterator[list[Holder]]:
    started = []
    async with AsyncExitStack() as ports:
        for index in range(2):
            identity = Identity.generate()
            service = ChunkService(identity, ChunkStore(tmp_path / f"holder{index}"), may_audit=only_the_auditor)
            address = await ports.enter_async_context(chunk_port(service))
            started.append(Holder(identity, service, address))
        yield started
    for holder in started:
        holder.service.chunks.close()


async def stored_chunk(holder: Holder) -> tuple[ChunkClient, bytes, bytes]:
    """A client (the auditor), and a fresh chunk (data, root) it has put on `holder`."""
    client = ChunkClient(AUDITOR)
    data = os.urandom(CHUNK)
    root = chunk_root(data)
    assert await client.put(holder.address, holder.node_id, root, data) is True
    return client, data, root


async def test_a_chunk_round_trips_byte_for_byte_and_an_honest_holder_passes_its_audits(
    holders: list[Holder],
) -> None:
    client, holder = ChunkClient(AUDITOR), holders[0]
    data = os.urandom(CHUNK)
    root = chunk_root(data)
    assert await client.put(holder.address, holder.node_id, root, data) is True
    assert await client.put(holder.address, holder.node_id, root, data) is False
    assert await client.get(holder.address, root) == data
    for _ in range(3):
        await client.audit(holder.address, holder.node_id, new_challenge(root, 301, 16))


async def test_a_chunk_with_a_wrong_hash_or_a_bad_signature_is_refused(holders: list[Holder]) -> None:
    sender, holder = Identity.generate(), holders[0]
    client = ChunkClient(sender)
    data = os.urandom(CHUNK)
    with pytest.raises(HolderFailed, match="do not hash"):
        await client.put(holder.address, holder.node_id, chunk_root(os.urandom(CHUNK)), data)
    with pytest.raises(HolderFailed, match="bad signature"):  # signed for another holder
        await client.put(holder.address, holders[1].node_id, chunk_root(data), data)
    root = chunk_root(data)
    for path in (chunk_path(os.urandom(32), len(data)), chunk_path(root, len(data) + 1)):  # another chunk, size
        auth = sign_request(sender, "PUT", path, b"", holder.node_id)
        reply = await raw_exchange(holder.address, announce({"op": "put", "root": root, "auth": auth}, len(data)))
        assert "bad signature" in reply["err"]
    assert holder.service.chunks.roots() == []


async def test_a_holder_that_lost_altered_or_never_had_a_chunk_fails_its_audit(
    holders: list[Holder], tmp_path: Path
) -> None:
    holder = holders[0]
    client, data, root = await stored_chunk(holder)
    # Never had it: the other holder.
    with pytest.raises(HolderFailed, match="not held"):
        await client.audit(holders[1].address, holders[1].node_id, new_challenge(root, 301, 8))
    # Altered on disk (bit rot, or made-up blocks): every block is challenged, so the change is hit.
    path = next((tmp_path / "holder0").glob(f"*/{root.hex()}"))
    altered = bytearray(data)
    altered[BLOCK_SIZE * 7] ^= 0xFF
    path.write_bytes(bytes(altered))
    challenge = new_challenge(root, 301, 8, random.Random(1))
    with pytest.raises(HolderFailed, match="proof refused"):
        await client.audit(holder.address, holder.node_id, replace(challenge, indices=[3, 7]))
    # Lost: deleted.
    holder.service.chunks.delete(root)
    with pytest.raises(HolderFailed, match="not held"):
        await client.audit(holder.address, holder.node_id, challenge)


async def test_an_old_answer_replayed_or_an_answer_passed_off_as_another_holders_fails(
    holders: list[Holder],
) -> None:
    holder = holders[0]
    _, _, root = await stored_chunk(holder)
    first = new_challenge(root, 301, 8)
    binding = challenge_binding(first.nonce, first.indices)
    auth = sign_request(AUDITOR, "PROVE", prove_path(root), b"", holder.node_id, bound=binding)
    header = {"op": "prove", "root": root, "idx": first.indices, "nonce": first.nonce, "auth": auth}
    reply, body = await raw_exchange_with_body(holder.address, frame(header))
    check_answer(first, holder.node_id, reply, body)  # the genuine answer checks
    later = replace(first, nonce=os.urandom(16))  # same blocks asked again, new nonce
    with pytest.raises(HolderFailed, match="does not cover"):
        check_answer(later, holder.node_id, reply, body)
    with pytest.raises(HolderFailed, match="another node"):
        check_answer(first, holders[1].node_id, reply, body)
    other_blocks = replace(first, indices=[i + 1 for i in first.indices])
    with pytest.raises(HolderFailed):
        check_answer(other_blocks, holder.node_id, reply, body)


async def test_a_holder_returning_wrong_bytes_is_caught_by_the_reader(holders: list[Holder], tmp_path: Path) -> None:
    holder = holders[0]
    client, _, root = await stored_chunk(holder)
    next((tmp_path / "holder0").glob(f"*/{root.hex()}")).write_bytes(os.urandom(CHUNK))
    with pytest.raises(HolderFailed, match="not this chunk"):
        await client.get(holder.address, root)


def raw_frame(header: dict) -> bytes:
    """A header exactly as given (`frame` would state the true body size)."""
    packed = msgpack.packb(header)
    return struct.pack(">I", len(packed)) + packed


GARBAGE = {
    "random bytes": os.urandom(200),
    "a header length of 4 GiB": struct.pack(">I", 0xFFFFFFFF) + b"x",
    "a truncated header": struct.pack(">I", 100) + b"\x81",
    "a header that is not a map": struct.pack(">I", 2) + msgpack.packb([1]),
    "an unknown op": frame({"op": "delete", "root": bytes(32)}),
    "a 20-byte root": frame({"op": "get", "root": bytes(20)}),
    "a body over the chunk size": raw_frame({"op": "put", "root": bytes(32), "auth": {}, "size": 1 << 40}),
    "put without auth": announce({"op": "put", "root": bytes(32)}, 1),
    "put with a string for auth": announce({"op": "put", "root": bytes(32), "auth": "x"}, 1),
    "prove with a bad nonce": frame({"op": "prove", "root": bytes(32), "idx": [0], "nonce": b"n"}),
    "prove with string indices": frame({"op": "prove", "root": bytes(32), "idx": ["0"], "nonce": bytes(16)}),
    "keep with a short blob id": frame({"op": "keep", "root": bytes(32), "blob": b"x"}),
    "keep on a node that keeps nothing": frame({"op": "keep", "root": bytes(32), "blob": bytes(32)}),
    # Headers are decoded before they are checked: only a small one is read at all, with bounded decoding.
    "a 64 KiB header": struct.pack(">I", 64 * 1024) + bytes(64 * 1024),
    "a header of extensions": struct.pack(">I", 3000) + b"\xd4\x05\x00" * 1000,
    "a header of 3,000 small arrays": struct.pack(">I", 3003) + b"\xdc\x0b\xb8" + b"\x90" * 3000,
}


@pytest.mark.parametrize("case", list(GARBAGE))
async def test_garbage_on_the_stream_gets_an_error_or_a_closed_stream_and_the_service_keeps_serving(
    holders: list[Holder], case: str
) -> None:
    holder = holders[0]
    before = holder.service.refused
    reader, writer = await asyncio.open_connection(*holder.address)
    writer.write(GARBAGE[case])
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert b"err" in answer and holder.service.refused == before + 1
    data = os.urandom(1000)
    client = ChunkClient(Identity.generate())
    assert await client.put(holder.address, holder.node_id, chunk_root(data), data)


async def raw_exchange(address: tuple[str, int], request: bytes) -> dict:
    reply, _ = await raw_exchange_with_body(address, request)
    return reply


async def raw_exchange_with_body(address: tuple[str, int], request: bytes) -> tuple[dict, bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    await writer.drain()
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    reply = msgpack.unpackb(await reader.readexactly(length), raw=False)
    body = await reader.readexactly(reply.get("size", 0))
    writer.close()
    return reply, body


async def test_a_farming_process_serves_chunks_on_its_node_address_and_keeps_them_across_sigkill(
    spawn: Callable[..., NodeProcess],
) -> None:
    farmer = spawn("farmer", "--farmer", "--chunk-quota", "64")
    address, holder_id = farmer.address, bytes.fromhex(farmer.node_id)
    client = ChunkClient(Identity.generate())
    data = os.urandom(CHUNK)
    root = chunk_root(data)
    assert await client.put(address, holder_id, root, data) is True
    farmer.process.kill()
    farmer.process.wait(timeout=10)
    again = spawn("farmer", "--farmer", "--chunk-quota", "64")
    assert await client.get(again.address, root) == data
    auditor = ChunkClient(again.identity)  # a registered farmer (itself: the only one in its mesh)
    await audit_once_registered(auditor, again.address, holder_id, new_challenge(root, 301, 32))
