"""A farmer's chunk port under the attacks found on a running mesh (attacks 8 and 9), over real TCP:
a put is refused on its header before its body is sent; stalled unsigned puts leave a farmer
process's memory flat; 1,100 idle connections are capped and timed out while the farmer's proxy keeps
answering; challenges are answered only to registered auditors, at a bounded rate, from kept trees."""

import asyncio
import logging
import os
import resource
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgpack
import pytest

from dhtmesh.crypto import Identity
from dhtmesh.crypto.merkle import BLOCK_SIZE, chunk_root
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ChunkStore
from dhtmesh.node.transfer.chunk_client import Challenge, ChunkClient, HolderRefused, new_challenge
from dhtmesh.node.transfer.chunk_service import (
    NOT_AUDITOR,
    TOO_MANY_REQUESTS,
    ChunkService,
    challenge_binding,
    chunk_path,
    prove_path,
)
from dhtmesh.node.transfer.framing import announce, read_header
from dhtmesh.node.transfer.port_limits import (
    HEADER_TIMEOUT,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_READS_PER_ADDRESS,
    PROVES_PER_ADDRESS,
    connection_cap,
)
from dhtmesh.testing import NodeProcess

from support import audit_once_registered, chunk_port, get_json

BLOCKS = 300
DATA = os.urandom(BLOCK_SIZE * BLOCKS)
ROOT = chunk_root(DATA)


@dataclass
class Holder:
    service: ChunkService
    node_id: bytes
    address: tuple[str, int]
    auditors: list[Identity]  # registered: the only keys it takes challenges from

    def count(self, name: str) -> int:
        return self.service.counters.get(name)


@pytest.fixture
async def holder(tmp_path: Path) -> AsyncIterator[Holder]:
    """A holder of one chunk that takes challenges from 40 registered auditors."""
    identity, auditors = Identity.generate(), [Identity.generate() for _ in range(40)]
    registered = {auditor.node_id for auditor in auditors}

    async def may_audit(node_id: bytes) -> bool:
        return node_id in registered

    service = ChunkService(identity, ChunkStore(tmp_path / "chunks"), may_audit=may_audit)
    async with chunk_port(service) as address:
        assert await ChunkClient(Identity.generate()).put(address, identity.node_id, ROOT, DATA)
        yield Holder(service, identity.node_id, address, auditors)
    service.chunks.close()


# ---- attack 8: the body is read only after the header is verified ----------------------------------


def put_headers(holder: Holder) -> dict[str, dict]:
    uploader = Identity.generate()
    replayed = sign_request(uploader, "PUT", chunk_path(ROOT, CHUNK_SIZE), b"", holder.node_id)
    return {
        "unsigned": {},
        "signed for another holder": sign_request(uploader, "PUT", chunk_path(ROOT, CHUNK_SIZE), b"", os.urandom(20)),
        "signed for another size": sign_request(uploader, "PUT", chunk_path(ROOT, 1000), b"", holder.node_id),
        "signed over the body, as before": sign_request(uploader, "PUT", f"/chunks/{ROOT.hex()}", b"x", holder.node_id),
        "a made-up signature": {**replayed, "Authorization": replayed["Authorization"][:-8] + "AAAAAA=="},
        "replayed": replayed,
    }


async def test_a_put_is_refused_on_its_header_and_its_body_is_never_asked_for(holder: Holder) -> None:
    """Each header claims a 4 MiB body and none is sent: the refusal comes while only the header is."""
    holder.service.chunks.delete(ROOT)
    cases = put_headers(holder)
    assert await raw_put_reply(holder.address, cases["replayed"]) == {"continue": True, "size": 0}  # first use
    for case, auth in cases.items():
        reply = await raw_put_reply(holder.address, auth)
        if case == "replayed":
            assert "replayed request" in reply["err"], case
        else:
            assert reply.get("err", "").startswith(("bad signature", "auth must be")), (case, reply)
    assert holder.count("chunk_port_bad_signatures") == len(cases)
    assert holder.service.chunks.roots() == []


async def raw_put_reply(address: tuple[str, int], auth: dict) -> dict:
    """The holder's answer to a put header claiming a 4 MiB body, before any of the body is sent."""
    header = {"op": "put", "root": ROOT, **({"auth": auth} if auth else {})}
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(announce(header, CHUNK_SIZE))
        return await asyncio.wait_for(read_header(reader), 10)
    finally:
        writer.close()


async def test_stalled_unsigned_puts_leave_a_farmer_process_memory_flat(spawn: Callable[..., NodeProcess]) -> None:
    """The attack: 120 unauthenticated puts, each sending all but the last bytes of a 4 MiB body and
    stalling, raised a farmer from 45 to 526 MiB. Now each is refused on its header."""
    farmer = spawn("farmer", "--farmer")
    before = rss_mib(farmer.pid)
    sources = [f"127.0.0.{2 + index % 4}" for index in range(120)]  # 30 a source: under the per-address cap
    streams = await asyncio.wait_for(asyncio.gather(*(stalled_put(farmer.address, s) for s in sources)), 120)
    try:
        after = rss_mib(farmer.pid)
    finally:
        for writer in streams:
            writer.close()
    assert after - before < 32, (before, after)
    counters = (await get_json(farmer.url, "/node/info"))[1]["counters"]
    assert counters["chunk_port_bad_signatures"] >= 120


async def stalled_put(address: tuple[str, int], source: str) -> asyncio.StreamWriter:
    """Send an unsigned put and its body but for the last piece, as far as the holder lets us."""
    _, writer = await asyncio.open_connection(*address, local_addr=(source, 0))
    piece = bytes(64 * 1024)
    try:
        writer.write(announce({"op": "put", "root": os.urandom(32), "auth": {}}, CHUNK_SIZE))
        for _ in range(CHUNK_SIZE // len(piece) - 1):
            writer.write(piece)
            await writer.drain()
    except OSError:
        pass  # refused and closed: what the fix does
    return writer


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def open_files(pid: int) -> tuple[int, int]:
    """The process's descriptors in use, and its soft limit on them."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft = int(next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3])
    return len(os.listdir(f"/proc/{pid}/fd")), soft


async def test_idle_connections_are_capped_and_timed_out_while_the_proxy_keeps_answering(
    spawn: Callable[..., NodeProcess],
) -> None:
    """The attack: 1,100 idle connections exhausted a 1,024-descriptor limit and the proxy then reset
    every request. The farmer runs with that limit (soft 512, hard 1,024: it raises the soft one)."""
    ensure_open_files(4096)
    farmer = spawn("farmer", "--farmer", open_files=(512, 1024))
    baseline, limit = open_files(farmer.pid)
    assert limit == 1024
    cap = connection_cap(limit)
    one_source = [("127.0.0.2", index) for index in range(100)]  # over the per-address cap
    many_sources = [(f"127.0.0.{10 + index % 20}", index) for index in range(1000)]  # over the total cap
    answers: list[asyncio.Task[tuple[str, str]]] = []
    for source, _ in one_source + many_sources:
        reader, writer = await asyncio.open_connection(*farmer.address, local_addr=(source, 0))
        answers.append(asyncio.ensure_future(answer_of(source, reader, writer)))
    in_use, _ = open_files(farmer.pid)
    statuses = await poll_node_info(farmer.url, until=asyncio.gather(*answers))
    assert set(statuses) == {200}, statuses  # the proxy answered throughout
    assert in_use - baseline <= cap + 32, (in_use, baseline)  # never near its 1,024 descriptors
    results = Counter(task.result() for task in answers)  # every connection was answered, then closed
    held_per_address, held_by_others = MAX_CONNECTIONS_PER_ADDRESS, cap - MAX_CONNECTIONS_PER_ADDRESS
    timed_out = f"no request within {HEADER_TIMEOUT:g} s"
    assert results == {
        ("127.0.0.2", timed_out): held_per_address,
        ("127.0.0.2", "too many connections from your address"): 100 - held_per_address,
        ("others", timed_out): held_by_others,
        ("others", "too many connections at once"): 1000 - held_by_others,
    }
    counters = (await get_json(farmer.url, "/node/info"))[1]["counters"]
    assert counters["chunk_port_header_timeouts"] == cap
    assert counters["chunk_port_connections_over_address_cap"] == 100 - held_per_address
    assert counters["chunk_port_connections_over_total_cap"] == 1000 - held_by_others
    # The port serves again: a chunk goes in and out.
    client = ChunkClient(Identity.generate())
    assert await client.put(farmer.address, bytes.fromhex(farmer.node_id), ROOT, DATA)
    assert await client.get(farmer.address, ROOT) == DATA


def ensure_open_files(wanted: int) -> None:
    """This test process holds a descriptor per connection it opens."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"this process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def answer_of(source: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, str]:
    """What the farmer answered an idle connection from `source` (it must answer, then close)."""
    try:
        reply = await asyncio.wait_for(read_header(reader), HEADER_TIMEOUT + 20)
        assert await reader.read() == b""
        return source if source == "127.0.0.2" else "others", str(reply.get("err"))
    finally:
        writer.close()


async def poll_node_info(url: str, until: asyncio.Future) -> list[int]:
    """GET /node/info every 0.2 s until `until` is done; the status of each (or the error's name)."""
    statuses: list[int] = []
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not until.done():
            try:
                async with session.get(f"{url}/node/info") as response:
                    await response.read()
                    statuses.append(response.status)
            except (aiohttp.ClientError, TimeoutError) as error:
                statuses.append(type(error).__name__)  # type: ignore[arg-type]
            await asyncio.wait([until], timeout=0.2)
    await until
    return statuses


async def test_a_connection_reset_inside_a_request_is_counted_quietly_and_the_port_keeps_serving(
    holder: Holder, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        _, writer = await asyncio.open_connection(*holder.address)
        writer.write(announce({"op": "get", "root": ROOT}, 0)[:7])  # part of a header, then a reset
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    assert await ChunkClient(Identity.generate()).get(holder.address, ROOT) == DATA
    assert holder.count("chunk_port_bad_frames") == 3
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


# ---- attack 9: challenges only from registered auditors, rate-limited, from kept trees -------------


async def test_a_challenge_is_answered_only_to_a_registered_auditor_and_its_tree_is_built_once(
    spawn: Callable[..., NodeProcess],
) -> None:
    farmer = spawn("farmer", "--farmer")
    holder_id = bytes.fromhex(farmer.node_id)
    await ChunkClient(Identity.generate()).put(farmer.address, holder_id, ROOT, DATA)
    stranger = ChunkClient(Identity.generate())
    for _ in range(3):
        with pytest.raises(HolderRefused, match=NOT_AUDITOR):
            await stranger.audit(farmer.address, holder_id, new_challenge(ROOT, BLOCKS, 8))
    counters = (await get_json(farmer.url, "/node/info"))[1]["counters"]
    assert counters["chunk_port_not_auditor"] == 3 and "chunk_port_trees_built" not in counters
    auditor = ChunkClient(farmer.identity)  # a registered farmer: itself, the only one in its mesh
    await audit_once_registered(auditor, farmer.address, holder_id, new_challenge(ROOT, BLOCKS, 8))
    for _ in range(3):
        await auditor.audit(farmer.address, holder_id, new_challenge(ROOT, BLOCKS, 8))
    counters = (await get_json(farmer.url, "/node/info"))[1]["counters"]
    assert counters["chunk_port_trees_built"] == 1


async def test_unsigned_and_forged_challenges_are_refused_before_any_tree_is_built(holder: Holder) -> None:
    challenge = new_challenge(ROOT, BLOCKS, 8)
    header = {"op": "prove", "root": ROOT, "idx": challenge.indices, "nonce": challenge.nonce}
    cases = {
        "unsigned": header,
        "signed for another chunk": {**header, "auth": prove_auth(holder, os.urandom(32), challenge)},
        "signed for other blocks": {**header, "idx": [0], "auth": prove_auth(holder, ROOT, challenge)},
    }
    for case, request in cases.items():
        reply = await raw_reply(holder.address, request)
        assert reply["err"].startswith(("bad signature", "auth must be")), case
    assert holder.count("chunk_port_bad_signatures") == len(cases) and holder.count("chunk_port_trees_built") == 0
    await ChunkClient(holder.auditors[0]).audit(holder.address, holder.node_id, challenge)
    assert holder.count("chunk_port_trees_built") == 1


def prove_auth(holder: Holder, root: bytes, challenge: Challenge) -> dict:
    """A challenge's signature by a registered auditor, over `root` and the challenge's blocks."""
    binding = challenge_binding(challenge.nonce, challenge.indices)
    return sign_request(holder.auditors[0], "PROVE", prove_path(root), b"", holder.node_id, bound=binding)


async def raw_reply(address: tuple[str, int], header: dict) -> dict:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(announce(header, 0))
        return await asyncio.wait_for(read_header(reader), 10)
    finally:
        writer.close()


async def test_a_burst_of_challenges_from_one_auditor_is_rate_limited_and_others_still_pass(holder: Holder) -> None:
    outcomes = await challenges(holder, [holder.auditors[0]] * 15)
    assert outcomes["passed"] >= 1 and outcomes[TOO_MANY_REQUESTS] >= 5, outcomes
    assert outcomes["passed"] + outcomes[TOO_MANY_REQUESTS] == 15
    assert holder.count("chunk_port_rate_limited") == outcomes[TOO_MANY_REQUESTS]
    assert (await challenges(holder, [holder.auditors[1]]))["passed"] == 1  # the budget is per auditor
    assert holder.count("chunk_port_trees_built") == 1  # every answer from one tree


async def test_a_burst_of_challenges_from_one_address_is_rate_limited(holder: Holder) -> None:
    outcomes = await challenges(holder, holder.auditors)  # 40 auditors, one address
    _, burst = PROVES_PER_ADDRESS
    assert outcomes["passed"] >= 1 and outcomes[TOO_MANY_REQUESTS] >= 40 - burst - 10, outcomes
    assert outcomes["passed"] + outcomes[TOO_MANY_REQUESTS] == 40


async def challenges(holder: Holder, auditors: list[Identity]) -> Counter[str]:
    """Challenge the holder once per auditor in the list, all at once; count the outcomes."""

    async def one(auditor: Identity) -> str:
        try:
            await ChunkClient(auditor).audit(holder.address, holder.node_id, new_challenge(ROOT, BLOCKS, 8))
        except HolderRefused as refusal:
            return refusal.reason
        return "passed"

    return Counter(await asyncio.gather(*(one(auditor) for auditor in auditors)))


async def test_a_failure_below_the_port_is_answered_counted_and_logged_once(
    holder: Holder, caplog: pytest.LogCaptureFixture
) -> None:
    """The chunk index fails (here: closed under the port): each request gets an error answer instead
    of a dropped connection, each is counted, and one traceback is logged, not one per request."""
    holder.service.chunks.close()
    caplog.set_level(logging.ERROR)
    client = ChunkClient(Identity.generate())
    for _ in range(5):
        with pytest.raises(HolderRefused, match="internal error"):
            await client.get(holder.address, ROOT)
    assert holder.count("chunk_port_internal_errors") == 5
    assert len([record for record in caplog.records if record.exc_info]) == 1


async def test_reads_nobody_takes_hold_a_few_slots_of_one_address_and_nothing_else(tmp_path: Path) -> None:
    """Gets need no signature: an address that asks for chunks and never reads them holds at most its
    few read slots; another address still reads, and puts (their own slots) still land."""
    identity = Identity.generate()
    service = ChunkService(identity, ChunkStore(tmp_path / "chunks"))
    big = os.urandom(CHUNK_SIZE)
    root = chunk_root(big)
    stalled: list[socket.socket] = []
    try:
        async with chunk_port(service) as address:
            assert await ChunkClient(Identity.generate()).put(address, identity.node_id, root, big)
            request = frame_of({"op": "get", "root": root})
            for _ in range(MAX_READS_PER_ADDRESS + 2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read: the send stalls
                sock.bind(("127.0.0.3", 0))
                sock.connect(address)
                sock.sendall(request)
                stalled.append(sock)
            await asyncio.sleep(0.5)
            assert service.counters.get("chunk_port_reads_over_address_cap") == 2
            other = ChunkClient(Identity.generate())
            assert await other.get(address, root) == big  # from 127.0.0.1
            data = os.urandom(5000)
            assert await other.put(address, identity.node_id, chunk_root(data), data)
    finally:
        for sock in stalled:
            sock.close()
        service.chunks.close()


def frame_of(header: dict) -> bytes:
    packed = msgpack.packb({**header, "size": 0}, use_bin_type=True)
    return struct.pack(">I", len(packed)) + packed
