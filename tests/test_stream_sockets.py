"""ptg's data framing as the node reads and writes it (`api.stream_frames`), held to ptgctl's own packing
(`ptgctl.util.pack_entries`/`unpack_entries`, the conformance reference): what a batch header means, what
breaks it and the close code each break earns, and the pull frame pair's start offsets."""

import json

import ptgctl.util
import pytest

from dhtmesh.api.stream_frames import (
    INVALID,
    MAX_BATCH_ENTRIES,
    MAX_COUNT,
    MAX_ENTRY,
    MAX_STREAMS,
    POLICY,
    TOO_BIG,
    FrameError,
    PushEntry,
    by_stream,
    check_entry,
    check_sid,
    close_reason,
    frames,
    pack_entries,
    parse_count,
    parse_cursors,
    parse_flag,
    parse_id,
    parse_push_header,
    parse_sids,
    split_batch,
    unpack_entries,
)

pytestmark = pytest.mark.unit


def code_of(call, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(FrameError) as raised:
        call(*args)
    return raised.value.code


def test_ptgctl_end_offsets_cut_a_batch_into_its_entries() -> None:
    offsets, data = ptgctl.util.pack_entries([b"abc", b"defg", b""])
    header = parse_push_header(str(offsets), ["s"])
    assert split_batch(header, bytes(data)) == [
        PushEntry("s", None, b"abc"),
        PushEntry("s", None, b"defg"),
        PushEntry("s", None, b""),
    ]


def test_ptgctl_per_entry_streams_and_ids_are_kept() -> None:
    offsets, data = ptgctl.util.pack_entries([b"one", b"two"], sid=["a", "b"], ts=["1700000000000-5", "1700000000001"])
    header = parse_push_header(json.dumps(offsets), ["a", "b"])
    entries = split_batch(header, bytes(data))
    assert entries == [PushEntry("a", "1700000000000-5", b"one"), PushEntry("b", "1700000000001-0", b"two")]
    assert by_stream(entries) == {"a": [0], "b": [1]}
    offsets, data = ptgctl.util.pack_entries([b"x", b"y", b"z"], sid=["a", "b", "a"])
    assert by_stream(split_batch(parse_push_header(json.dumps(offsets), ["a", "b"]), bytes(data))) == {
        "a": [0, 2],
        "b": [1],
    }


def test_every_stream_takes_any_named_stream_and_never_a_bare_offset_list() -> None:
    assert parse_push_header('[["x", 1], ["y", 2]]', ["*"]) == [("x", None, 1), ("y", None, 2)]
    assert code_of(parse_push_header, "[1, 2]", ["*"]) == POLICY
    assert code_of(parse_push_header, "[1, 2]", ["a", "b"]) == POLICY
    too_many = json.dumps([[f"s{i}", i + 1] for i in range(MAX_STREAMS + 1)])
    assert code_of(parse_push_header, too_many, ["*"]) == POLICY  # each stream is an append at once


def test_readmes_start_offsets_are_refused_not_an_entry_dropped() -> None:
    """ptg's README sends start offsets ([0, 3]) and ptg silently stores only the first entry; here the
    offsets must end where the data ends."""
    header = parse_push_header("[0, 3]", ["s"])
    assert code_of(split_batch, header, b"xyzabc") == INVALID


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("0,9,18", INVALID),  # ptg's tests/ws_push.py: not JSON
        ("{}", INVALID),
        ("[]", INVALID),
        ('["3"]', INVALID),
        ("[-1]", INVALID),
        ("[true]", INVALID),
        ('[["other", 3]]', POLICY),
        ('[["s", "not-an-id", 3]]', INVALID),
        ('[["s", "12-x", 3]]', INVALID),
        ('[["", 3]]', INVALID),
        (str(list(range(1, MAX_BATCH_ENTRIES + 2))), TOO_BIG),
    ],
)
def test_bad_headers_earn_their_close_code(header: str, code: int) -> None:
    assert code_of(parse_push_header, header, ["s"]) == code


def test_offsets_never_go_back_and_entries_stay_under_a_mebibyte() -> None:
    assert code_of(split_batch, [("s", None, 5), ("s", None, 3)], b"abc") == INVALID
    assert code_of(split_batch, [("s", None, MAX_ENTRY + 1)], bytes(MAX_ENTRY + 1)) == TOO_BIG
    assert code_of(check_entry, bytes(MAX_ENTRY + 1)) == TOO_BIG
    assert check_entry(bytes(MAX_ENTRY)) == bytes(MAX_ENTRY)


def test_pull_frames_unpack_with_ptgctl() -> None:
    entries = [("a", "1-0", b"abc"), ("b", "2-0", b""), ("a", "3-0", b"defg")]
    offsets, payload = pack_entries(entries)
    assert offsets == [["a", "1-0", 0], ["b", "2-0", 3], ["a", "3-0", 3]]
    assert ptgctl.util.unpack_entries(offsets, payload) == entries
    assert unpack_entries(offsets, payload) == entries
    assert pack_entries([]) == ([], b"")
    assert unpack_entries([], b"") == []  # an unknown stream's GET /data
    with pytest.raises(FrameError):
        unpack_entries([["a", "1-0", 2]], b"abc")


def test_frames_keep_each_pair_under_the_clients_message_size() -> None:
    entries = [("a", f"{i}-0", bytes(40)) for i in range(5)]
    assert [len(run) for run in frames(entries, limit=100)] == [2, 2, 1]
    assert [len(run) for run in frames(entries)] == [5]
    assert frames([]) == []


def test_stream_lists_ids_and_cursors() -> None:
    assert parse_sids("a+b+a") == ["a", "b"]
    assert parse_sids("*", allow_all=True) == ["*"]
    assert code_of(parse_sids, "*") == INVALID
    assert code_of(parse_sids, "a++b") == INVALID
    assert code_of(check_sid, "a+b") == INVALID  # `+` joins streams: no name holds one
    assert code_of(parse_sids, "+".join(f"s{i}" for i in range(MAX_STREAMS + 1))) == POLICY
    assert parse_id("1700000000000") == "1700000000000-0"
    assert parse_id(1700000000000) == "1700000000000-0"
    assert code_of(parse_id, True) == INVALID
    # `+` in a query decodes to a space: both separate the streams' positions
    assert parse_cursors("5-1 6-2", ["a", "b"]) == {"a": "5-1", "b": "6-2"}
    assert parse_cursors("5-1+6-2", ["a", "b"]) == {"a": "5-1", "b": "6-2"}
    assert parse_cursors("$", ["a", "b"]) == {"a": "$", "b": "$"}
    assert parse_cursors("-", ["a"]) == {"a": "0"}
    assert code_of(parse_cursors, "1-0 2-0 3-0", ["a", "b"]) == INVALID


def test_counts_and_flags_as_clients_send_them() -> None:
    assert parse_count(None) == 1
    assert parse_count(str(MAX_COUNT)) == MAX_COUNT
    for bad in ("0", str(MAX_COUNT + 1), "-1", "x", ""):
        assert code_of(parse_count, bad) == INVALID
    assert parse_flag("True") and parse_flag("true") and parse_flag("1")  # ptgctl sends Python's str(True)
    assert not parse_flag(None) and not parse_flag("False") and not parse_flag("0")
    assert code_of(parse_flag, "maybe") == INVALID


def test_a_close_reason_fits_its_frame() -> None:
    assert len(close_reason("é" * 100).encode()) <= 123
    assert close_reason("short") == "short"
