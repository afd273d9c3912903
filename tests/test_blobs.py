"""Blobs and audits over real processes: a mesh of 6 farming `dhtmesh run` processes (audits every
second) and a gateway node. A 50 MiB blob round-trips byte for byte through another node than the one
it was put through; audits run continuously and show in every farmer's reputation; a farmer that
deletes 30% of its chunks is caught and its chunks repaired while reads keep working; made-up and
replayed answers fail; one auditor's false verdicts do not condemn an honest farmer; an interrupted
upload leaves nothing behind; a wrong hash is refused; garbage gets JSON errors.

The processes are shared by the module; tests that damage the mesh (deletion, SIGKILL) run last.
"""

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgpack
import pytest
from multidict import CIMultiDict

from dhtmesh.api.shapes import BlobStored
from dhtmesh.client import Client, ClientError
from dhtmesh.crypto import Identity
from dhtmesh.crypto.merkle import BLOCK_SIZE, blob_root, blocks_of, chunk_root, prove_blocks, tree_over
from dhtmesh.node.audits.journal import AuditJournal
from dhtmesh.node.blobs.download import BlobReader
from dhtmesh.node.blobs.holder import ChunkKeeper
from dhtmesh.node.blobs.placement import Placer
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.agent import FarmerAgent
from dhtmesh.node.records.audit import AuditEntry, Outcome
from dhtmesh.node.records.blob import BLOB_KEYS, BLOB_MANIFEST_TYPE, decode_manifest
from dhtmesh.node.records.registry import FarmerRegistry
from dhtmesh.node.records.rules import RECORD_RULES
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ChunkStore
from dhtmesh.node.transfer.binding import start_with_stream_socket
from dhtmesh.node.transfer.chunk_client import ChunkClient, HolderFailed, new_challenge
from dhtmesh.node.transfer.chunk_service import ChunkService, proof_message
from dhtmesh.testing import FAST, NodeProcess, ProcessGroup, eventually, run_cli, start_node

from support import chunk_port

pytestmark = pytest.mark.process

FARMERS = 6
BIG = 50 * 1024 * 1024
AUDIT_PERIOD = "1"
PENDING_TIMEOUT = 4.0
SMALL_LIMIT_MIB = 1  # the last farmer takes blobs of at most 1 MiB, to test the limit


@dataclass
class Mesh:
    group: ProcessGroup
    farmers: list[NodeProcess]
    gateway: NodeProcess  # not a farmer: blobs are put through it

    def farmer_by_id(self, node_id: bytes) -> NodeProcess:
        return next(f for f in self.farmers if f.node_id == node_id.hex())


@dataclass
class StoredBlob:
    data: bytes
    blob_id: str


def farmer_args(index: int) -> list[str]:
    args = ["--farmer", "--audit-period", AUDIT_PERIOD, "--pending-timeout", str(PENDING_TIMEOUT)]
    return args + (["--blob-limit", str(SMALL_LIMIT_MIB)] if index == FARMERS - 1 else [])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    group = ProcessGroup(tmp_path_factory.mktemp("blob-mesh"))
    try:
        first = group.launch("f0", *farmer_args(0))
        farmers = [first] + [group.launch(f"f{i}", "-b", first.udp, *farmer_args(i)) for i in range(1, FARMERS)]
        gateway = group.launch("gateway", "-b", first.udp)
        asyncio.run(wait_until_online(gateway.url, FARMERS))
        yield Mesh(group, farmers, gateway)
    finally:
        group.stop()


@pytest.fixture(scope="module")
def big_blob(mesh: Mesh) -> StoredBlob:
    data = os.urandom(BIG)
    return StoredBlob(data, asyncio.run(put_blob(mesh.gateway.url, data)).id)


async def wait_until_online(url: str, count: int) -> None:
    async def online() -> bool:
        return len(await online_farmers(url)) >= count

    await eventually(online, within=30, every=0.3)  # the farmers all registered


async def online_farmers(url: str) -> list[dict]:
    async with Client(url) as client:
        return await client.online_farmers()


async def put_blob(url: str, data: bytes) -> BlobStored:
    async with Client(url) as client:
        return await client.put_blob(data, len(data))


async def get_blob(url: str, blob_id: str, byte_range: str | None = None) -> bytes:
    async with Client(url) as client:
        return await client.read_blob(blob_id, byte_range)


async def read_blob(url: str, blob_id: str, byte_range: str | None = None) -> tuple[int, bytes, CIMultiDict]:
    """The blob over HTTP, with its status and headers, for the tests of what HTTP says of it."""
    headers = {"Range": byte_range} if byte_range else {}
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/blob/{blob_id}", headers=headers) as r:
        return r.status, await r.read(), r.headers.copy()


async def audits_of(url: str, farmer_id: str) -> dict:
    async with Client(url) as client:
        return await client.farmer_audits(bytes.fromhex(farmer_id))


async def counters(url: str) -> dict:
    async with Client(url) as client:
        return (await client.info())["counters"]


def expected_blob_id(data: bytes) -> str:
    chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
    return blob_root([(chunk_root(chunk), len(chunk)) for chunk in chunks]).hex()


@pytest.fixture
async def observer(mesh: Mesh) -> AsyncIterator[DhtNode]:
    """An in-process node joined to the mesh, to look at it from outside (holdings, manifests)."""
    node = await start_node(FAST)
    await node.join([mesh.farmers[0].address])
    yield node
    await node.stop()


def reader_for(node: DhtNode) -> BlobReader:
    return BlobReader(Placer(node, FarmerRegistry(node), ChunkClient(node.identity)))


# ---- data -----------------------------------------------------------------------------------------


async def test_a_50_mib_blob_round_trips_byte_for_byte_through_another_node(
    mesh: Mesh, big_blob: StoredBlob, observer: DhtNode
) -> None:
    assert big_blob.blob_id == expected_blob_id(big_blob.data)  # the id is the root over the chunks
    status, data, headers = await read_blob(mesh.farmers[3].url, big_blob.blob_id)
    assert status == 200 and data == big_blob.data
    assert headers["ETag"] == f'"{big_blob.blob_id}"' and headers["Accept-Ranges"] == "bytes"
    # Each chunk is on 3 distinct farmers, all of them registered farmers.
    reader = reader_for(observer)
    manifest = await reader.manifest(bytes.fromhex(big_blob.blob_id))
    assert manifest is not None and len(manifest.chunk_roots) == math.ceil(BIG / CHUNK_SIZE)
    farmer_ids = {bytes.fromhex(f.node_id) for f in mesh.farmers}
    for root, length in zip(manifest.chunk_roots, manifest.chunk_lengths, strict=True):
        holders = await reader.holders(root, length)
        assert len(set(holders)) >= 3 and set(holders) <= farmer_ids


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 100),
        (f"bytes={CHUNK_SIZE - 10}-{CHUNK_SIZE + 9}", CHUNK_SIZE - 10, CHUNK_SIZE + 10),  # across two chunks
        (f"bytes={BIG - 5}-", BIG - 5, BIG),
        ("bytes=-1000", BIG - 1000, BIG),
        (f"bytes={3 * CHUNK_SIZE}-{BIG * 2}", 3 * CHUNK_SIZE, BIG),  # an end past the blob is cut to it
    ],
)
async def test_ranges_of_a_blob(mesh: Mesh, big_blob: StoredBlob, header: str, start: int, end: int) -> None:
    status, data, headers = await read_blob(mesh.farmers[1].url, big_blob.blob_id, header)
    assert status == 206 and data == big_blob.data[start:end]
    assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{BIG}"


async def test_an_empty_blob_and_a_one_byte_blob(mesh: Mesh) -> None:
    for data in (b"", b"x"):
        stored = await put_blob(mesh.gateway.url, data)
        assert stored.id == expected_blob_id(data) and stored.size == len(data)
        assert await get_blob(mesh.farmers[2].url, stored.id) == data


def test_the_cli_puts_and_gets_a_blob_with_a_progress_bar(mesh: Mesh, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(9 * 1024 * 1024 + 123))
    put = run_cli("blob", "put", str(source), "--url", mesh.gateway.url, timeout=60)
    assert put.returncode == 0, put.stderr
    assert "100%" in put.stderr and "9.0/9.0 MiB" in put.stderr
    blob_id = json.loads(put.stdout)["id"]
    target = tmp_path / "out.bin"
    got = run_cli("blob", "get", blob_id, "-o", str(target), "--url", mesh.farmers[4].url, timeout=60)
    assert got.returncode == 0, got.stderr
    assert target.read_bytes() == source.read_bytes() and "100%" in got.stderr
    assert not list(tmp_path.glob(".*.partial"))
    # Garbage: one clear error line each, and nothing written.
    for args, message in (
        (["put", str(tmp_path / "missing")], "cannot read"),
        (["get", "nothex", "-o", str(tmp_path / "x")], "64 lowercase hex"),
        (["get", "ab" * 32, "-o", str(tmp_path / "x")], "404: no such blob"),
    ):
        failed = run_cli("blob", *args, "--url", mesh.gateway.url)
        assert failed.returncode == 1 and failed.stderr.startswith("dhtmesh: error:") and message in failed.stderr
        assert not (tmp_path / "x").exists()


# ---- audits -----------------------------------------------------------------------------------------


async def test_audits_run_continuously_and_show_in_every_holders_reputation(mesh: Mesh, big_blob: StoredBlob) -> None:
    """Every farmer holding chunks is audited by several others, and passes; the counts keep growing."""
    deadline = time.monotonic() + 60
    while True:
        reputations = {f["nodeid"]: f["reputation"] for f in await online_farmers(mesh.gateway.url)}
        holding = [f for f in mesh.farmers if list((f.data_dir / "chunks").glob("??/*"))]
        if all(reputations[f.node_id]["auditors"]["passed"] >= 2 for f in holding):
            break
        assert time.monotonic() < deadline, reputations
        await asyncio.sleep(1)
    assert len(holding) >= 3
    for farmer in holding:
        shown = reputations[farmer.node_id]
        assert shown["standing"] == "good" and shown["verified_bytes"] > 0 and shown["failed"] == 0
    farmer = holding[0]
    first = await audits_of(mesh.farmers[5].url, farmer.node_id)
    assert first["audits"], first
    for audit in first["audits"]:
        assert audit["farmer"] == farmer.node_id and audit["auditor"] != farmer.node_id
        assert audit["verdict"] == "passed" and len(audit["challenge"]["blocks"]) >= 1
        assert len(audit["challenge"]["nonce"]) == 32 and audit["chunk_bytes"] >= 0  # the empty blob: 0
    await asyncio.sleep(4)
    later = await audits_of(mesh.farmers[5].url, farmer.node_id)
    assert later["reputation"]["last_audit"] > first["reputation"]["last_audit"]  # audits keep coming


class MadeUpProofs(ChunkService):
    """A holder that answers every challenge with blocks of data it made up (and honest-looking paths)."""

    async def _answer_challenge(self, root: bytes, nonce: bytes, indices: list[int]) -> tuple[dict, bytes]:
        leaves = list(blocks_of(os.urandom(self.chunks.size(root) or 0)))
        proofs = prove_blocks(tree_over(leaves), leaves, indices)
        body = msgpack.packb([proof.to_wire() for proof in proofs], use_bin_type=True)
        signature = self._identity.sign(proof_message(root, nonce, indices, body))
        return {"ok": True, "key": self._identity.public_key, "sig": signature}, body


class ReplayedAnswers(ChunkService):
    """A holder that answered one challenge honestly and replays that answer to every later one (as one
    that deleted the chunk would have to; it keeps the chunk listed, so that challenges reach it)."""

    recorded: tuple[dict, bytes] | None = None

    async def _answer_challenge(self, root: bytes, nonce: bytes, indices: list[int]) -> tuple[dict, bytes]:
        if self.recorded is None:
            self.recorded = await super()._answer_challenge(root, nonce, indices)
        return self.recorded


async def anyone(_: bytes) -> bool:
    """Whom a cheating holder takes challenges from: anyone (it wants to be seen answering)."""
    return True


@asynccontextmanager
async def cheating_holder(
    service_class: type[ChunkService], mesh: Mesh, tmp_path: Path, name: str
) -> AsyncIterator[DhtNode]:
    """A registered farmer whose port runs `service_class`; stopped after."""
    node = DhtNode(Identity.generate(), FAST, rules=RECORD_RULES)
    stream_socket = await start_with_stream_socket(node, "127.0.0.1", 0)  # as `dhtmesh run --farmer` does
    store = ChunkStore(tmp_path / name)
    try:
        await node.join([mesh.farmers[0].address])
        service = service_class(node.identity, store, ChunkKeeper(node, store).keep, may_audit=anyone)
        async with chunk_port(service, stream_socket):
            await FarmerAgent(FarmerRegistry(node)).step()  # a registered farmer: only farmers' holdings are audited
            yield node
    finally:
        store.close()
        await node.stop()


async def first_chunk_of(mesh: Mesh, observer: DhtNode, data: bytes) -> tuple[bytes, bytes]:
    blob_id = bytes.fromhex((await put_blob(mesh.gateway.url, data)).id)
    manifest = await reader_for(observer).manifest(blob_id)
    assert manifest is not None
    return blob_id, manifest.chunk_roots[0]


async def wait_for_verdict(url: str, farmer: bytes, verdict: str, auditors: int = 1, within: float = 60) -> dict:
    deadline = time.monotonic() + within
    while True:
        document = await audits_of(url, farmer.hex())
        if document["reputation"]["auditors"][verdict] >= auditors:
            return document
        assert time.monotonic() < deadline, document
        await asyncio.sleep(1)


async def test_made_up_blocks_and_a_replayed_answer_fail_their_audits(
    mesh: Mesh, observer: DhtNode, tmp_path: Path
) -> None:
    data = os.urandom(300 * 1024)
    blob_id, root = await first_chunk_of(mesh, observer, data)
    client = ChunkClient(Identity.generate())
    async with AsyncExitStack() as holders:
        cheaters = [
            await holders.enter_async_context(cheating_holder(MadeUpProofs, mesh, tmp_path, "made-up")),
            await holders.enter_async_context(cheating_holder(ReplayedAnswers, mesh, tmp_path, "replayer")),
        ]
        for node in cheaters:
            await client.put(node.address, node.node_id, root, data)
            await client.keep(node.address, root, blob_id)  # publishes its holding: auditors will come
        replayer = cheaters[1]
        challenge = new_challenge(root, math.ceil(len(data) / BLOCK_SIZE), 8)
        await client.audit(replayer.address, replayer.node_id, challenge)  # its one honest answer
        farmer_ids = {f.node_id for f in mesh.farmers}
        for node in cheaters:
            document = await wait_for_verdict(mesh.gateway.url, node.node_id, "failed")
            failed = [a for a in document["audits"] if a["verdict"] == "failed"]
            assert {a["auditor"] for a in failed} <= farmer_ids and all(a["chunk"] == root.hex() for a in failed)
            assert document["reputation"]["passed"] == 0 and document["reputation"]["verified_bytes"] == 0


async def test_one_auditor_publishing_false_failures_cannot_condemn_an_honest_farmer(
    mesh: Mesh, big_blob: StoredBlob, observer: DhtNode
) -> None:
    reader = reader_for(observer)
    manifest = await reader.manifest(bytes.fromhex(big_blob.blob_id))
    assert manifest is not None
    root, length = manifest.chunk_roots[0], manifest.chunk_lengths[0]
    honest = (await reader.holders(root, length))[0]
    await wait_for_verdict(mesh.gateway.url, honest, "passed", auditors=2)
    # A registered farmer turns rogue (it never challenged anyone), and a throwaway key joins in.
    stranger = await start_node(FAST)
    await stranger.join([mesh.farmers[0].address])
    await FarmerAgent(FarmerRegistry(observer)).step()
    await wait_until_online(mesh.farmers[2].url, FARMERS + 1)
    for rogue_node in (observer, stranger):
        journal = AuditJournal(rogue_node)
        for _ in range(5):
            entry = AuditEntry(root, manifest.blob_id, length, os.urandom(16), (0,), Outcome.FAILED, int(time.time()))
            await journal.record(honest, entry)
    await stranger.stop()
    document = await audits_of(mesh.farmers[2].url, honest.hex())
    rogue = [a for a in document["audits"] if a["auditor"] == observer.node_id.hex()]
    assert len(rogue) == 5 and all(a["verdict"] == "failed" and a["auditor_registered"] for a in rogue)
    throwaway = [a for a in document["audits"] if a["auditor"] == stranger.node_id.hex()]
    assert len(throwaway) == 5 and not any(a["auditor_registered"] for a in throwaway)
    reputation = document["reputation"]  # the throwaway key's verdicts do not count; the rogue farmer's do
    assert reputation["auditors"]["failed"] == 1 and reputation["auditors"]["passed"] >= 2
    assert reputation["standing"] in ("good", "disputed") and reputation["verified_bytes"] >= length
    async with Client(mesh.farmers[2].url) as client:
        assert (await client.farmer(honest))["reputation"]["standing"] != "failing"


# ---- uploads that go wrong ------------------------------------------------------------------------


def chunk_file(farmer: NodeProcess, root: bytes) -> Path:
    return farmer.data_dir / "chunks" / root.hex()[:2] / root.hex()


async def test_an_interrupted_upload_leaves_nothing_visible_and_nothing_on_farmers(
    mesh: Mesh, observer: DhtNode
) -> None:
    first_chunk = os.urandom(CHUNK_SIZE)
    root = chunk_root(first_chunk)

    async def body() -> AsyncIterator[bytes]:
        yield first_chunk
        yield os.urandom(1000)
        await asyncio.sleep(2)  # the first chunk is placed meanwhile
        raise ConnectionAbortedError("the uploader goes away")

    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ClientError, ConnectionAbortedError)):
            async with session.post(f"{mesh.gateway.url}/api/blob", data=body()) as response:
                await response.read()
    holding = [f for f in mesh.farmers if chunk_file(f, root).exists()]
    assert holding  # placed (pending) before the uploader went away
    shards = await asyncio.gather(*(observer.get(key) for key in BLOB_KEYS))
    manifests = [decode_manifest(v.data) for values in shards for v in values if v.type == BLOB_MANIFEST_TYPE]
    assert all(root not in manifest.chunk_roots for manifest in manifests)  # nothing half-visible
    deadline = time.monotonic() + PENDING_TIMEOUT + 10
    while any(chunk_file(f, root).exists() for f in holding):
        assert time.monotonic() < deadline, "the pending chunk was not dropped"
        await asyncio.sleep(0.5)
    for farmer in holding:
        assert (await counters(farmer.url))["pending_chunks_dropped"] >= 1


async def test_a_chunk_uploaded_with_a_wrong_hash_is_refused(mesh: Mesh) -> None:
    farmer = mesh.farmers[1]
    data, other = os.urandom(10_000), os.urandom(10_000)
    client = ChunkClient(Identity.generate())
    with pytest.raises(HolderFailed, match="do not hash"):
        await client.put(farmer.address, bytes.fromhex(farmer.node_id), chunk_root(other), data)
    assert not chunk_file(farmer, chunk_root(other)).exists()


async def test_a_farmer_keeps_a_chunk_only_for_a_published_blob_that_lists_it(mesh: Mesh, big_blob: StoredBlob) -> None:
    farmer = mesh.farmers[2]
    data = os.urandom(10_000)
    client = ChunkClient(Identity.generate())
    with pytest.raises(HolderFailed, match="not held"):
        await client.keep(farmer.address, chunk_root(data), bytes.fromhex(big_blob.blob_id))
    await client.put(farmer.address, bytes.fromhex(farmer.node_id), chunk_root(data), data)
    with pytest.raises(HolderFailed, match="no manifest"):
        await client.keep(farmer.address, chunk_root(data), os.urandom(32))
    with pytest.raises(HolderFailed, match="does not list"):
        await client.keep(farmer.address, chunk_root(data), bytes.fromhex(big_blob.blob_id))


async def test_blob_routes_answer_garbage_with_json_errors_and_keep_serving(mesh: Mesh, big_blob: StoredBlob) -> None:
    limited = mesh.farmers[FARMERS - 1]
    over = os.urandom(SMALL_LIMIT_MIB * 1024 * 1024 + 1)

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: the limit is found while reading
        for start in range(0, len(over), 100_000):
            yield over[start : start + 100_000]

    before = (await counters(limited.url)).get("http_bad_requests", 0)
    async with aiohttp.ClientSession() as session:
        for data in (over, streamed()):
            async with session.post(f"{limited.url}/api/blob", data=data) as response:
                assert response.status == 413 and "at most" in (await response.json())["err"]
    bad_reads = {
        "/api/blob/nothex": (None, 400, "64 lowercase hex"),
        "/api/blob/" + "ab" * 33: (None, 400, "64 lowercase hex"),
        "/api/blob/" + "ab" * 32: (None, 404, "no such blob"),
        f"/api/blob/{big_blob.blob_id}": ("bytes=oops", 400, "Range must be"),
        f"/api/blob/{big_blob.blob_id} ": ("bytes=1-2,5-6", 400, "Range must be"),
        f"/api/blob/{big_blob.blob_id}  ": (f"bytes={BIG}-", 416, "outside the blob"),
        f"/api/blob/{big_blob.blob_id}    ": ("bytes=99999999999999999999999-", 400, "Range must be"),
    }
    async with aiohttp.ClientSession() as session:
        for path, (header, status, message) in bad_reads.items():
            headers = {"Range": header} if header else {}
            async with session.get(limited.url + path.strip(), headers=headers) as response:
                assert response.status == status, path
                assert message in (await response.json())["err"]
    after = (await counters(limited.url))["http_bad_requests"]
    assert after - before == 2 + len(bad_reads)
    assert await get_blob(limited.url, big_blob.blob_id, "bytes=0-9") == big_blob.data[:10]


# ---- damage: these run last -----------------------------------------------------------------------


async def test_a_farmer_deleting_30_percent_of_its_chunks_is_caught_and_repaired_while_reads_work(
    mesh: Mesh, big_blob: StoredBlob, observer: DhtNode
) -> None:
    victim = max(mesh.farmers, key=lambda f: len(kept_chunks(f)))
    kept = kept_chunks(victim)
    deleted = dict(kept[: math.ceil(0.3 * len(kept))])
    assert len(kept) >= 5
    for root in deleted:
        chunk_file(victim, root).unlink()  # silently: its index and holdings still say it keeps them
    victim_id = bytes.fromhex(victim.node_id)
    reads = 0

    async def keep_reading() -> None:
        nonlocal reads
        while True:
            try:
                data = await get_blob(mesh.gateway.url, big_blob.blob_id)
            except ClientError as error:
                raise AssertionError(f"a read failed during the repair: {error}") from error
            assert data == big_blob.data, "a read returned other bytes during the repair"
            reads += 1

    reading = asyncio.get_running_loop().create_task(keep_reading())
    try:
        await wait_for_verdict(mesh.gateway.url, victim_id, "failed", auditors=2, within=90)
        reader = reader_for(observer)
        client = ChunkClient(mesh.farmers[0].identity)  # holders take challenges from registered farmers only
        deadline = time.monotonic() + 90
        for root, length in deleted.items():
            while await proven_holders(reader, client, root, length, victim_id) < 3:
                assert time.monotonic() < deadline, f"chunk {root.hex()} was not repaired"
                assert not reading.done() or reading.exception() is None
                await asyncio.sleep(1)
    finally:
        reading.cancel()
        failure = await asyncio.gather(reading, return_exceptions=True)
    assert not isinstance(failure[0], AssertionError), failure[0]
    assert reads >= 1
    reputation = (await audits_of(mesh.farmers[0].url, victim.node_id))["reputation"]
    assert reputation["failed"] >= 2 and reputation["auditors"]["failed"] >= 2


def kept_chunks(farmer: NodeProcess) -> list[tuple[bytes, int]]:
    """`(root, length)` of the chunks the farmer keeps for published blobs, read from its index."""
    index = farmer.data_dir / "chunks" / "chunks.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
        return db.execute("SELECT root, size FROM chunks WHERE kept_for IS NOT NULL ORDER BY root").fetchall()


async def proven_holders(reader: BlobReader, client: ChunkClient, root: bytes, length: int, excluded: bytes) -> int:
    """How many holders of the chunk, other than `excluded`, pass an audit by us now."""
    proven = 0
    for holder in await reader.holders(root, length):
        address = await reader.placer.address_of(holder)
        if holder == excluded or address is None:
            continue
        try:
            await client.audit(address, holder, new_challenge(root, max(1, math.ceil(length / BLOCK_SIZE)), 4))
            proven += 1
        except HolderFailed:
            continue
    return proven
