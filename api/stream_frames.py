"""ptg-api-server's data framing as pure functions: stream lists (`a+b`), entry ids and cursors, the push
socket's batch header (END offsets) and the pull socket's and `GET /data`'s entry list (START offsets).

Nothing here does I/O, so every rule is unit-tested on its own (tests/test_stream_sockets.py). A frame or
query that breaks a rule raises `FrameError`, whose `code` is the WebSocket close code it earns (RFC 6455
§7.4.1: 1003 a frame of the wrong kind, 1007 data that does not parse, 1008 a policy refused, 1009 too big);
a REST route answers the same error 400 (`BadRequest`).

Framing is ptgctl's (`util.pack_entries`/`unpack_entries`, the conformance reference): a push batch is a
text frame of JSON END offsets, `[3, 7]`, `[[sid, 3], [sid, 7]]` or `[[sid, id, 3], ...]`, then one binary
frame of the entries concatenated; a pull frame pair is a text frame `[[sid, id, start], ...]` then the
payloads concatenated. Unlike ptg, offsets must cover the binary frame exactly (ptg silently drops an
entry when README's start offsets are sent) and every sid must be one the route names.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

MAX_STREAMS = 16  # streams one request names (`a+b+...`)
MAX_COUNT = 1000  # entries per stream one read returns
MAX_ENTRY = 1024 * 1024  # Streams.MAX_ENTRY: an entry over it is refused before any work
MAX_BATCH_ENTRIES = 1000  # entries in one push batch or POST (the log appends at most 1,000 at once)
MAX_FRAME_BYTES = 16 * 1024 * 1024  # ptgctl's websockets `max_size` (2**24): no frame we send is larger
MAX_SID = 256  # characters in a stream name (Streams checks the rest)
ALL = "*"  # ptg's "every stream": a push batch names each entry's stream

# Close codes (RFC 6455 §7.4.1).
UNSUPPORTED = 1003  # a text frame where a binary one was expected, or the reverse
INVALID = 1007  # a header that is not JSON or not offsets, an id that is not one
POLICY = 1008  # a stream the route does not name, a refused token
TOO_BIG = 1009  # an entry over MAX_ENTRY, a batch over MAX_BATCH_ENTRIES
UNAVAILABLE = 1013  # "try again later": the stream's homes are out of reach
NORMAL = 1000

_ID = re.compile(r"[0-9]{1,15}(-[0-9]{1,19})?")
_SPECIAL_CURSORS = {"$", "0"}
_CURSOR_SPLIT = re.compile(r"[+ ]")


class FrameError(ValueError):
    """A frame, or a query, that breaks the framing; `code` is the close code it earns on a socket."""

    def __init__(self, message: str, code: int = INVALID) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class PushEntry:
    """One entry of a push batch: its stream, its explicit id (None: the stream picks one), its bytes."""

    sid: str
    id: str | None
    data: bytes


def parse_sids(text: str, allow_all: bool = False) -> list[str]:
    """The streams of a path's `{sid}`: `a` or `a+b` (ptg's multi-stream form), each once, in order;
    `*` (every stream) only where `allow_all`."""
    if text == ALL:
        if not allow_all:
            raise FrameError("'*' (every stream) is only for a batch push")
        return [ALL]
    sids = list(dict.fromkeys(text.split("+")))
    if len(sids) > MAX_STREAMS:
        raise FrameError(f"at most {MAX_STREAMS} streams at once, not {len(sids)}", POLICY)
    for sid in sids:
        check_sid(sid)
    return sids


def check_sid(sid: object) -> str:
    """A stream's name: 1 to MAX_SID characters, no `+` (it joins several) and not `*` (every stream)."""
    if not isinstance(sid, str) or not 1 <= len(sid) <= MAX_SID or "+" in sid or sid == ALL:
        raise FrameError(f"a stream name is 1 to {MAX_SID} characters, no '+' and not '*': {str(sid)[:40]!r}")
    return sid


def parse_id(text: object) -> str:
    """An explicit entry id: `<ms>-<seq>`, or `<ms>` (sequence 0), or a whole number of ms."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        text = str(text)
    if not isinstance(text, str) or not _ID.fullmatch(text):
        raise FrameError(f"an entry id is <unix-ms>-<seq>, not {str(text)[:40]!r}")
    return text if "-" in text else f"{text}-0"


def parse_cursor(text: str) -> str:
    """A read position: `$` (only what comes next), `0` or `-` (the start), or an entry id (after it)."""
    if text in _SPECIAL_CURSORS:
        return text
    if text == "-":
        return "0"
    return parse_id(text)


def parse_cursors(text: str, sids: Sequence[str]) -> dict[str, str]:
    """`last_entry_id` for `sids`: one position for all, or one per stream joined with `+` (which a
    query decodes to a space, hence both)."""
    parts = [part for part in _CURSOR_SPLIT.split(text) if part]
    if len(parts) == 1:
        parts *= len(sids)
    if len(parts) != len(sids):
        raise FrameError(f"last_entry_id names {len(parts)} positions for {len(sids)} streams")
    return {sid: parse_cursor(part) for sid, part in zip(sids, parts, strict=True)}


def parse_count(text: str | None, default: int = 1) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
        raise FrameError(f"count is a whole number from 1 to {MAX_COUNT}, not {text[:20]!r}")
    return int(text)


def parse_flag(text: str | None) -> bool:
    """A query flag as ptgctl sends it (`True`, Python's str of a bool) or as people type it."""
    if text is None:
        return False
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on", ""):
        return True
    if lowered in ("false", "0", "no", "off", "none"):
        return False
    raise FrameError(f"a flag is true or false, not {text[:20]!r}")


def parse_push_header(text: str, sids: Sequence[str]) -> list[tuple[str, str | None, int]]:
    """A batch's text frame: `(sid, explicit id or None, end offset)` per entry. A flat list of END
    offsets puts every entry in the route's one stream; `[sid, end]` and `[sid, id, end]` name each
    entry's stream, which must be one of the route's `sids` (any, for `*`)."""
    try:
        header = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise FrameError("a batch header is JSON: a list of end offsets") from error
    if not isinstance(header, list) or not header:
        raise FrameError("a batch header is a non-empty list of end offsets")
    if len(header) > MAX_BATCH_ENTRIES:
        raise FrameError(f"at most {MAX_BATCH_ENTRIES} entries in a batch", TOO_BIG)
    items = [_header_item(item, sids) for item in header]
    if len({sid for sid, _, _ in items}) > MAX_STREAMS:  # one append each, at once: `*` names any
        raise FrameError(f"a batch is for at most {MAX_STREAMS} streams", POLICY)
    return items


def _header_item(item: object, sids: Sequence[str]) -> tuple[str, str | None, int]:
    if isinstance(item, list) and len(item) in (2, 3):
        sid, explicit, end = (item[0], None, item[1]) if len(item) == 2 else item
        sid = check_sid(sid)
        if sid not in sids and ALL not in sids:
            raise FrameError(f"stream {sid[:40]!r} is not one this socket names", POLICY)
        return sid, None if explicit is None else parse_id(explicit), _offset(end)
    if len(sids) != 1 or ALL in sids:
        raise FrameError("a batch for several streams names each entry's stream: [[sid, end], ...]", POLICY)
    return sids[0], None, _offset(item)


def _offset(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FrameError(f"an offset is a whole number, not {str(value)[:20]!r}")
    return value


def split_batch(header: list[tuple[str, str | None, int]], data: bytes) -> list[PushEntry]:
    """The entries of a batch: its binary frame cut at the header's END offsets, which must not go
    back and must end exactly at the frame's end; no entry may be over MAX_ENTRY."""
    if header[-1][2] != len(data):
        raise FrameError(f"the offsets end at {header[-1][2]}, the data at {len(data)}: end offsets cover it all")
    entries = []
    view = memoryview(data)
    start = 0
    for sid, explicit, end in header:
        if end < start:
            raise FrameError(f"end offsets never go back ({end} after {start})")
        if end - start > MAX_ENTRY:
            raise FrameError(f"an entry is at most {MAX_ENTRY} bytes, not {end - start}", TOO_BIG)
        entries.append(PushEntry(sid, explicit, bytes(view[start:end])))
        start = end
    return entries


def check_entry(data: bytes) -> bytes:
    if len(data) > MAX_ENTRY:
        raise FrameError(f"an entry is at most {MAX_ENTRY} bytes, not {len(data)}", TOO_BIG)
    return data


def by_stream(entries: Sequence[PushEntry]) -> dict[str, list[int]]:
    """Each stream's entries' positions in the batch, in order: one append per stream."""
    positions: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        positions.setdefault(entry.sid, []).append(index)
    return positions


def pack_entries(entries: Sequence[tuple[str, str, bytes]]) -> tuple[list[list], bytes]:
    """The pull frame pair's (and GET /data's) `[[sid, id, start], ...]` and the payloads concatenated."""
    offsets: list[list] = []
    start = 0
    for sid, entry_id, data in entries:
        offsets.append([sid, entry_id, start])
        start += len(data)
    return offsets, b"".join(data for _, _, data in entries)


def unpack_entries(offsets: object, payload: bytes) -> list[tuple[str, str, bytes]]:
    """What `pack_entries` packed (a client's side of a pull frame pair)."""
    if not isinstance(offsets, list):
        raise FrameError("an entry list is [[sid, id, start], ...]")
    if not offsets:
        return []
    starts = []
    for item in offsets:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], int)):
            raise FrameError("an entry list is [[sid, id, start], ...]")
        starts.append(item[2])
    ends = [*starts[1:], len(payload)]
    if any(end < start for start, end in zip(starts, ends, strict=True)) or starts[0] != 0:
        raise FrameError("start offsets begin at 0 and never go back")
    return [(sid, entry_id, payload[start:end]) for (sid, entry_id, start), end in zip(offsets, ends, strict=True)]


def frames(entries: Sequence[tuple[str, str, bytes]], limit: int = MAX_FRAME_BYTES) -> list[list]:
    """`entries` cut into runs whose payloads fit one frame (`limit` bytes; an entry alone always fits,
    being at most MAX_ENTRY), in order."""
    runs: list[list] = []
    size = limit + 1
    for entry in entries:
        if size + len(entry[2]) > limit:
            runs.append([])
            size = 0
        runs[-1].append(entry)
        size += len(entry[2])
    return runs


def close_reason(text: str) -> str:
    """A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455 §5.5: 125 with the code)."""
    encoded = text.encode()[:123]
    return encoded.decode(errors="ignore")
