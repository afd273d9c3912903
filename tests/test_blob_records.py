"""The records behind blobs and audits (manifests, holdings, audit logs) and the pure pieces around
them: every forgery or misplacement is refused by the rules every hop applies, reputation needs two
auditors to condemn, the audit choice depends on the auditor and the epoch only, uploads are cut into
chunks exactly, and `Range` headers are read as HTTP says."""

import asyncio
import hashlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtmesh.crypto import Identity
from dhtmesh.crypto.merkle import chunk_root
from dhtmesh.node.audits.choice import choose_chunks, chunk_universe, epoch_of
from dhtmesh.node.audits.reputation import CONFIRMING_AUDITORS, WINDOW, reputation
from dhtmesh.node.blobs.upload import BlobTooLarge, chunks_of
from dhtmesh.node.records import RESERVED_TYPES, InvalidRecord, check_value, is_valid_successor
from dhtmesh.node.records.audit import (
    AUDIT_TYPE,
    MAX_ENTRIES,
    AuditEntry,
    AuditLog,
    Outcome,
    audits_key,
    decode_audit_log,
    signed_audit_log,
)
from dhtmesh.node.records.blob import (
    BLOB_KEYS,
    BLOB_MANIFEST_TYPE,
    MAX_CHUNKS,
    Manifest,
    blob_key,
    blob_value_id,
    signed_manifest,
)
from dhtmesh.node.records.farmer import farmer_value_id
from dhtmesh.node.records.holding import HOLDING_TYPE, Holding, chunk_key, signed_holding
from dhtmesh.node.records.keys import reserved_type
from dhtmesh.node.storage.chunks import CHUNK_SIZE, ChunkStore
from dhtmesh.node.values import InvalidValue, Value, sign_value
from dhtmesh.proxy.blob_routes import byte_range
from dhtmesh.proxy.errors import ProxyError, refusal_of, status_of


def manifest_of(*datas: bytes) -> Manifest:
    return Manifest(tuple(chunk_root(d) for d in datas), tuple(len(d) for d in datas))


# ---- manifests ------------------------------------------------------------------------------------


def test_a_signed_manifest_passes_and_names_its_blob() -> None:
    manifest = manifest_of(b"a" * 5000, b"b" * 10)
    value = signed_manifest(Identity.generate(), manifest)
    check_value(blob_key(manifest.blob_id), value)
    assert manifest.size == 5010 and manifest.chunk_offsets() == [0, 5000] and manifest.block_count(0) == 2


def manifest_forgeries() -> dict[str, tuple[bytes, Value]]:
    uploader = Identity.generate()
    manifest = manifest_of(b"x" * 100, b"y" * 100)
    other = manifest_of(b"z" * 100)
    good = signed_manifest(uploader, manifest)
    key = blob_key(manifest.blob_id)

    def signed(data: bytes, value_id: int | None = None, under: bytes = key) -> Value:
        return sign_value(uploader, under, replace(good, data=data, id=value_id or good.id, sig=b""))

    def raw(*fields: object) -> bytes:
        return msgpack.packb(list(fields), use_bin_type=True)

    roots = list(manifest.chunk_roots)
    return {
        "another blob's chunks under this id": (key, signed(other.encode())),
        "another value id": (key, signed(manifest.encode(), value_id=good.id + 1)),
        "another shard": (
            BLOB_KEYS[(BLOB_KEYS.index(key) + 1) % 16],
            signed(manifest.encode(), under=BLOB_KEYS[(BLOB_KEYS.index(key) + 1) % 16]),
        ),
        "unsigned": (key, Value(good.id, good.data, BLOB_MANIFEST_TYPE)),
        "lengths changed (same roots)": (key, signed(raw(1, roots, [100, 99]))),
        "a zero-length chunk among others": (key, signed(raw(1, roots, [100, 0]))),
        "a chunk over the chunk size": (key, signed(raw(1, roots[:1], [CHUNK_SIZE + 1]))),
        "a length that is a bool": (key, signed(raw(1, roots[:1], [True]))),
        "a 31-byte root": (key, signed(raw(1, [roots[0][:31]], [100]))),
        "no chunks": (key, signed(raw(1, [], []))),
        "format 2": (key, signed(raw(2, roots, [100, 100]))),
        "not msgpack": (key, signed(b"\xc1\xc1")),
    }


@pytest.mark.parametrize("case", list(manifest_forgeries()))
def test_a_forged_or_misplaced_manifest_is_refused(case: str) -> None:
    key, value = manifest_forgeries()[case]
    with pytest.raises(InvalidValue):
        check_value(key, value)


def test_blob_directory_keys_hold_manifests_only() -> None:
    squatter = Identity.generate()
    for value in (Value(1, b"junk"), sign_value(squatter, BLOB_KEYS[3], Value(7, b"junk", seq=1))):
        with pytest.raises(InvalidRecord, match="reserved for records of type 0x426c"):
            check_value(BLOB_KEYS[3], value)


def test_holding_and_audit_keys_hold_their_records_only() -> None:
    """Junk of another type can neither fill a chunk's or a farmer's audit key nor hide its records."""
    squatter, farmer = Identity.generate(), Identity.generate()
    for key, kind in ((chunk_key(chunk_root(b"c")), HOLDING_TYPE), (audits_key(farmer.node_id), AUDIT_TYPE)):
        for value in (Value(1, b"junk"), sign_value(squatter, key, Value(7, b"junk", seq=1))):
            with pytest.raises(InvalidRecord, match=f"reserved for records of type {kind:#06x}"):
                check_value(key, value)
        # an audit log is no holding, and a holding no audit log
        other = HOLDING_TYPE if kind == AUDIT_TYPE else AUDIT_TYPE
        with pytest.raises(InvalidRecord, match="reserved"):
            check_value(key, sign_value(squatter, key, Value(7, b"junk", other, seq=1)))


def test_ordinary_keys_are_not_reserved() -> None:
    for name in (b"mykey", b"hello", bytes(20), b"\xff" * 20):
        key = name if len(name) == 20 else hashlib.sha1(name).digest()
        assert reserved_type(key, RESERVED_TYPES) is None
        check_value(key, Value(1, b"anything"))


def test_a_record_never_changes_type_under_the_same_owner_and_id() -> None:
    uploader = Identity.generate()
    manifest = manifest_of(b"q" * 10)
    value = signed_manifest(uploader, manifest)
    as_plain = sign_value(uploader, blob_key(manifest.blob_id), Value(value.id, b"plain", 0, seq=2))
    assert not is_valid_successor(value, as_plain)
    assert is_valid_successor(value, replace(value, seq=2))


# ---- holdings ----------------------------------------------------------------------------------------


def test_a_holding_is_signed_by_its_holder_under_its_chunks_key() -> None:
    holder, stranger = Identity.generate(), Identity.generate()
    root = chunk_root(b"data")
    holding = Holding(holder.node_id, root, 4, bytes(32), int(time.time()))
    check_value(chunk_key(root), signed_holding(holder, holding))
    with pytest.raises(InvalidRecord, match="signed by its holder"):
        check_value(chunk_key(root), signed_holding(stranger, holding))  # naming another as the holder
    moved = signed_holding(holder, holding)
    with pytest.raises(InvalidValue):
        check_value(chunk_key(chunk_root(b"other")), sign_value(holder, chunk_key(chunk_root(b"other")), moved))
    wrong_id = sign_value(holder, chunk_key(root), replace(moved, id=farmer_value_id(stranger.node_id)))
    with pytest.raises(InvalidRecord, match="value id"):
        check_value(chunk_key(root), wrong_id)
    for bad in (replace(holding, length=-1), replace(holding, root=b"short"), replace(holding, since=1.5)):
        with pytest.raises(InvalidValue):
            check_value(chunk_key(root), signed_holding(holder, bad))  # type: ignore[arg-type]


# ---- audit logs --------------------------------------------------------------------------------------


def entry(
    outcome: Outcome = Outcome.PASSED, at: int | None = None, root: bytes = b"r" * 32, length: int = 100
) -> AuditEntry:
    return AuditEntry(root, b"b" * 32, length, os.urandom(16), (1, 5), outcome, at or int(time.time()))


def test_an_audit_log_is_signed_by_its_auditor_under_its_farmers_key() -> None:
    auditor, farmer, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    log = AuditLog(auditor.node_id, farmer.node_id, (entry(), entry(Outcome.FAILED)))
    value = signed_audit_log(auditor, log, 3)
    check_value(audits_key(farmer.node_id), value)
    assert decode_audit_log(value.data) == log
    forged = {
        "signed by another": signed_audit_log(stranger, log, 1),
        "under another farmer": sign_value(auditor, audits_key(stranger.node_id), replace(value, sig=b"")),
        "self-audit": signed_audit_log(farmer, AuditLog(farmer.node_id, farmer.node_id, (entry(),)), 1),
        "from the future": signed_audit_log(auditor, replace(log, entries=(entry(at=int(time.time()) + 3600),)), 1),
        "too many entries": signed_audit_log(auditor, replace(log, entries=(entry(),) * (MAX_ENTRIES + 1)), 1),
        "no entries": signed_audit_log(auditor, replace(log, entries=()), 1),
    }
    for name, bad in forged.items():
        with pytest.raises(InvalidValue):
            check_value(audits_key(farmer.node_id), bad)
            pytest.fail(f"accepted: {name}")
    garbage = msgpack.packb(
        [1, auditor.node_id, farmer.node_id, [[b"r" * 32, b"b" * 32, 1, b"n" * 16, [1], "maybe", 1]]]
    )
    with pytest.raises(InvalidRecord):
        decode_audit_log(garbage)
    assert value.type == AUDIT_TYPE and HOLDING_TYPE != AUDIT_TYPE


# ---- reputation -------------------------------------------------------------------------------------


def log_by(auditor: bytes, *entries: AuditEntry) -> AuditLog:
    return AuditLog(auditor, b"F" * 20, entries)


def test_one_auditor_cannot_condemn_a_farmer_two_can() -> None:
    now = int(time.time())
    chunk = b"c" * 32
    honest = [log_by(bytes([i]) * 20, entry(at=now - 10, root=chunk)) for i in range(3)]
    rogue = log_by(b"\xee" * 20, *(entry(Outcome.FAILED, at=now - i, root=chunk) for i in range(5)))
    alone = reputation([*honest, rogue], now)
    assert (alone.failed, alone.failed_by, alone.passed_by) == (5, 1, 3)
    assert alone.standing == "disputed" and alone.verified_bytes == 100
    second = log_by(b"\xef" * 20, entry(Outcome.FAILED, at=now - 1, root=chunk))
    together = reputation([*honest, rogue, second], now)
    assert together.failing_by == CONFIRMING_AUDITORS and together.standing == "failing"
    assert together.verified_bytes == 0  # two auditors failed that chunk after its last pass


def test_misses_are_not_failures() -> None:
    """A farmer whose port is flooded (or that is away) misses audits: it is "unreachable" at worst,
    never "failing", and keeps the bytes it proved; a failure still counts beside misses."""
    now = int(time.time())
    chunk = b"c" * 32
    passed = [log_by(bytes([0x10 + i]) * 20, entry(at=now - 60, root=chunk)) for i in range(2)]
    missed = [log_by(bytes([i]) * 20, entry(Outcome.MISSED, at=now - i, root=chunk)) for i in range(3)]
    shown = reputation([*passed, *missed], now)
    assert (shown.failing_by, shown.missing_by, shown.standing) == (0, 3, "unreachable")
    assert shown.verified_bytes == 100 and shown.to_json()["missing_auditors"] == 3
    answering = log_by(b"\x09" * 20, entry(at=now, root=chunk))
    assert reputation([*passed, *missed, answering], now).standing == "good"
    one_failure = log_by(b"\xee" * 20, entry(Outcome.FAILED, at=now, root=chunk))
    assert reputation([*passed, *missed, one_failure], now).standing == "disputed"


def test_reputation_counts_the_window_only_and_sums_distinct_chunks() -> None:
    now = int(time.time())
    logs = [
        log_by(b"a" * 20, entry(at=now - WINDOW - 5, root=b"1" * 32), entry(at=now - 5, root=b"2" * 32, length=7)),
        log_by(b"b" * 20, entry(at=now - 3, root=b"2" * 32, length=7), entry(at=now - 2, root=b"3" * 32, length=9)),
    ]
    shown = reputation(logs, now)
    assert (shown.passed, shown.verified_bytes, shown.last_audit, shown.standing) == (3, 16, now - 2, "good")
    assert reputation([], now).standing == "unaudited"


# ---- the audit choice ---------------------------------------------------------------------------------


def test_the_audit_choice_depends_on_the_auditor_and_the_epoch_only() -> None:
    chunks = [(bytes([b]) * 32, i) for b in range(10) for i in range(4)]
    auditor = b"A" * 20
    first = choose_chunks(auditor, 7, chunk_universe(chunks), 3)
    assert first == choose_chunks(auditor, 7, chunk_universe(list(reversed(chunks))), 3)  # not steered by order
    chunks = chunk_universe(chunks)
    assert len(set(first)) == 3 and set(first) <= set(chunks)
    picks = {tuple(choose_chunks(auditor, epoch, chunks, 3)) for epoch in range(20)}
    assert len(picks) > 15  # a new choice every epoch
    assert choose_chunks(b"B" * 20, 7, chunks, 3) != first
    assert choose_chunks(auditor, 7, chunks[:2], 5) != [] and len(choose_chunks(auditor, 7, chunks[:2], 5)) == 2
    assert epoch_of(125.0, 60.0) == 2


# ---- cutting an upload into chunks -----------------------------------------------------------------


async def pieces_of(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for size in sizes:
        yield data[start : start + size]
        start += size
    yield data[start:]


@given(st.binary(max_size=5000), st.lists(st.integers(0, 700), max_size=12), st.integers(1, 900))
def test_an_upload_is_cut_into_exact_chunks(data: bytes, sizes: list[int], chunk_size: int) -> None:
    async def cut() -> list[bytes]:
        return [chunk async for chunk in chunks_of(pieces_of(data, sizes), 10_000, chunk_size)]

    chunks = asyncio.run(cut())
    assert b"".join(chunks) == data and chunks
    assert (all(len(chunk) == chunk_size for chunk in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_size) or data == b""


async def test_an_upload_over_the_limit_stops_as_soon_as_it_is_over() -> None:
    with pytest.raises(BlobTooLarge):
        async for _ in chunks_of(pieces_of(bytes(3000), [1000, 1000, 1000]), 2500, 1000):
            pass


# ---- Range headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 1)),
        ("bytes=10-19", (10, 20)),
        ("bytes=90-", (90, 100)),
        ("bytes=90-5000", (90, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=-5000", (0, 100)),
        (" bytes=1-2 ", (1, 3)),
        ("bytes=5-4", None),  # invalid: ignored, as RFC 9110 says
    ],
)
def test_ranges_are_read_as_http_says(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == expected


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("bytes=100-", 416),
        ("bytes=-0", 416),
        ("bytes=-", 400),
        ("items=1-2", 400),
        ("bytes=1-2,4-5", 400),
        ("bytes=" + "9" * 30 + "-", 400),
        ("bytes=a-b", 400),
    ],
)
def test_bad_ranges_are_refused(header: str, status: int) -> None:
    with pytest.raises(ProxyError) as refused:
        byte_range(header, 100)
    refusal = refusal_of(refused.value)
    assert refusal is not None and status_of(refused.value, refusal) == status


# ---- pending chunks -----------------------------------------------------------------------------------


async def test_pending_chunks_are_dropped_after_their_time_kept_ones_stay(tmp_path: object) -> None:
    store = ChunkStore(tmp_path / "chunks")  # type: ignore[operator]
    kept, pending, recent = (os.urandom(5000) for _ in range(3))
    for data in (kept, pending):
        await store.put(chunk_root(data), data)
    assert store.keep(chunk_root(kept), b"B" * 32) and not store.keep(b"n" * 32, b"B" * 32)
    cutoff = time.time()
    await store.put(chunk_root(recent), recent)
    assert store.drop_pending(cutoff) == [chunk_root(pending)]
    assert store.is_kept(chunk_root(kept)) and store.has(chunk_root(recent)) and not store.has(chunk_root(pending))
    assert store.used_bytes == 10_000 and store.kept() == [(chunk_root(kept), b"B" * 32)]
    assert blob_value_id(bytes(32)) == 1 and len(BLOB_KEYS) == 16
    store.close()


async def test_a_chunk_store_from_before_pending_chunks_keeps_what_it_held(tmp_path: object) -> None:
    directory = tmp_path / "old"  # type: ignore[operator]
    data = os.urandom(5000)
    store = ChunkStore(directory)
    await store.put(chunk_root(data), data)
    store.close()
    with sqlite3.connect(directory / "chunks.sqlite3") as db:  # the table as the previous version made it
        db.execute("CREATE TABLE old AS SELECT root, size, stored_at FROM chunks")
        db.execute("DROP TABLE chunks")
        db.execute("ALTER TABLE old RENAME TO chunks")
    reopened = ChunkStore(directory)
    assert reopened.is_kept(chunk_root(data)) and reopened.drop_pending(time.time() + 1) == []
    more = os.urandom(100)
    assert await reopened.put(chunk_root(more), more) and not reopened.is_kept(chunk_root(more))
    reopened.close()


def test_a_manifest_lists_at_most_what_an_upload_can_make() -> None:
    """Anyone may sign a manifest, and every auditor draws from every chunk listed: the rule, not only
    uploads, caps a manifest's chunks."""
    signer = Identity.generate()
    too_many = Manifest(tuple(os.urandom(32) for _ in range(MAX_CHUNKS + 1)), (1,) * (MAX_CHUNKS + 1))
    value = signed_manifest(signer, too_many)
    with pytest.raises(InvalidRecord, match=f"1 to {MAX_CHUNKS} chunks"):
        check_value(blob_key(too_many.blob_id), value)
    just_enough = Manifest(too_many.chunk_roots[:MAX_CHUNKS], (1,) * MAX_CHUNKS)
    check_value(blob_key(just_enough.blob_id), signed_manifest(signer, just_enough))
