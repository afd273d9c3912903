"""Entry ids "<unix-ms>-<seq>" (Redis streams' form): parsing, printing, and the next id a primary gives.

An id is kept as a pair of integers `(ms, seq)`, compared as a tuple; "0-0" is below every entry's id.
"""

import re
import time

from dhtmesh.node.streams.errors import BadStreamRequest

Id = tuple[int, int]
ZERO: Id = (0, 0)
MAX_PART = (1 << 63) - 1  # Redis's bound, and SQLite's INTEGER
# The highest ms a writer may name (the year 33658): an explicit id of Redis's bound used a stream's ids
# up, and every append after it failed; above this one the primary's own ids go on past any use.
MAX_EXPLICIT_MS = 10**15 - 1
_ID = re.compile(r"(\d{1,19})(?:-(\d{1,19}))?")


def parse(text: str, default_seq: int = 0) -> Id:
    """The id `text` states ("<ms>-<seq>" or "<ms>", whose seq is `default_seq`); raises BadStreamRequest."""
    match = _ID.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise BadStreamRequest(f"an entry id is '<ms>-<seq>' or '<ms>', not {text!r}")
    ms, seq = int(match[1]), default_seq if match[2] is None else int(match[2])
    if ms > MAX_PART or seq > MAX_PART:
        raise BadStreamRequest(f"an entry id's parts are at most {MAX_PART}")
    return ms, seq


def text(entry_id: Id) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def next_id(last: Id, explicit: str | None, clock_ms: int) -> Id:
    """The id of the entry appended after `last`: `explicit` if given and above `last` (else
    BadStreamRequest), else (max(clock, last ms), seq) with seq counting within the ms, so that ids
    strictly increase even when the clock goes back."""
    if explicit is not None:
        if parse(explicit)[0] > MAX_EXPLICIT_MS:
            raise BadStreamRequest(f"an entry id's ms is at most {MAX_EXPLICIT_MS}")
        if "-" in explicit:
            wanted = parse(explicit)
        else:  # "<ms>": the next seq in that ms (Redis's "<ms>-*")
            ms = parse(explicit)[0]
            wanted = (ms, last[1] + 1 if ms == last[0] else 0)
        if wanted <= last:
            raise BadStreamRequest(f"the id {text(wanted)} is not above the stream's last id {text(last)}")
        return wanted
    if clock_ms > last[0]:
        return clock_ms, 0
    if last[1] >= MAX_PART:
        return last[0] + 1, 0
    return last[0], last[1] + 1
