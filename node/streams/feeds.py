"""`Feeds`: the committed entries of the streams this node's readers wait on, fetched once per stream.

A blocking read (`Streams.read` with a timeout) of a stream is served from the stream's feed on this
node: one loop that follows the stream's primary (one request, answered with the new entries at each
commit: no request per entry, as a long poll made) and keeps the latest `CACHE_ENTRIES` of them, so that
any number of readers of one stream on this node cost the primary one followed read, and a new entry
reaches them one message after its commit.

A reader whose cursor is at or above the feed's base (every entry above the base, up to the feed's
cursor, is in the cache) is served from it; a reader further behind reads from the primary directly.
Ids are the cursors, so a reader moving between nodes resumes without gaps or duplicates. A feed
nobody read for `IDLE` seconds ends; one whose primary cannot be followed ends at once (its readers
then read from the homes directly, which finds a live primary, and fail as they do).
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from dhtmesh.node.stats import Counters
from dhtmesh.node.streams.errors import StreamError, StreamUnavailable
from dhtmesh.node.streams.ids import Id
from dhtmesh.node.tasks import Supervisor

CACHE_ENTRIES = 10_000
CACHE_BYTES = 16 * 1024 * 1024
# Of all feeds' caches together: each feed keeps at most its share (1,024 feeds of 16 MiB were 16 GiB).
CACHED_BYTES = 256 * 1024 * 1024
IDLE = 30.0
MAX_FEEDS = 1024
MAX_EMPTY_FOLLOWS = 3  # follows in a row that end unanswered (sent to a home that is no primary) before a feed ends

Fetch = Callable[[str, str, "str | list", int, float], Awaitable[tuple[Id, list[tuple[Id, bytes]]]]]
"""(token, sid, after, count, wait) -> (cursor, [(id, data)]): a read of committed entries at the primary."""
Follow = Callable[[str, str, list], AsyncIterator[tuple[Id, list[tuple[Id, bytes]]]]]
"""(token, sid, after) -> each (cursor, [(id, data)]) committed above `after` at the primary, as they commit."""


@dataclass
class _Feed:
    base: Id
    cursor: Id
    token: str  # the latest reader's: the primary verifies it on every poll
    entries: deque[tuple[Id, bytes]] = field(default_factory=deque)
    size: int = 0
    used: float = field(default_factory=time.monotonic)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def take(self, rows: list[tuple[Id, bytes]], most_bytes: int) -> None:
        """Add `rows` (the next committed entries), keeping at most CACHE_ENTRIES and `most_bytes`."""
        self.entries.extend(rows)
        self.size += sum(len(data) for _, data in rows)
        while len(self.entries) > CACHE_ENTRIES or self.size > most_bytes:
            dropped, data = self.entries.popleft()
            self.size -= len(data)
            self.base = dropped
        self.cursor = rows[-1][0]

    def after(self, cursor: Id, count: int) -> list[tuple[Id, bytes]]:
        if cursor >= self.cursor:
            return []
        found = []
        for entry_id, data in reversed(self.entries):  # readers are near the end
            if entry_id <= cursor:
                break
            found.append((entry_id, data))
        return found[::-1][:count]


def _idle(feed: _Feed) -> bool:
    return time.monotonic() - feed.used >= IDLE


class Feeds:
    def __init__(self, fetch: Fetch, follow: Follow, counters: Counters) -> None:
        self._fetch = fetch
        self._follow_primary = follow
        self._counters = counters
        self._feeds: dict[str, _Feed] = {}
        self._loops = Supervisor(counters)

    def __len__(self) -> int:
        return len(self._feeds)

    async def read(
        self, token: str, sid: str, after: "str | list", count: int, wait: float
    ) -> tuple["str | list", list[tuple[Id, bytes]] | None]:
        """Entries above `after` ("$": the feed's cursor), waiting up to `wait`, and the cursor they are
        above; the entries are None if the feed cannot serve it (the caller reads from the primary,
        above that cursor: "$" read there once this one waited would skip what came meanwhile)."""
        feed = self._feeds.get(sid) or await self._open(token, sid)
        if feed is None:
            return after, None
        feed.token, feed.used = token, time.monotonic()
        cursor = feed.cursor if after == "$" else (after[0], after[1])
        if cursor < feed.base:
            return [*cursor], None
        found = feed.after(cursor, count)
        if found or wait <= 0:
            return [*cursor], found
        async with feed.changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await feed.changed.wait_for(lambda: feed.cursor > cursor or self._feeds.get(sid) is not feed)
        found = feed.after(cursor, count) if cursor >= feed.base else None
        if not found and self._feeds.get(sid) is not feed:
            return [*cursor], None  # the feed ended (its follow refused or lost): read from the primary
        return [*cursor], found

    async def _open(self, token: str, sid: str) -> _Feed | None:
        if len(self._feeds) >= MAX_FEEDS:
            self._counters.add("stream_feeds_over_cap")
            return None
        cursor, _ = await self._fetch(token, sid, "$", 1, 0.0)
        if sid in self._feeds:  # another reader opened it meanwhile
            return self._feeds[sid]
        feed = self._feeds[sid] = _Feed(cursor, cursor, token)
        self._loops.start("stream_feed", lambda: self._follow(sid, feed), sid)
        return feed

    async def _follow(self, sid: str, feed: _Feed) -> None:
        try:
            unanswered = 0
            while not _idle(feed):
                answered = False
                async with contextlib.aclosing(self._follow_primary(feed.token, sid, [*feed.cursor])) as updates:
                    async for _, rows in updates:
                        answered = True
                        if rows:
                            feed.take(rows, min(CACHE_BYTES, CACHED_BYTES // max(1, len(self._feeds))))
                            async with feed.changed:
                                feed.changed.notify_all()
                        if _idle(feed):
                            break
                unanswered = 0 if answered else unanswered + 1
                if unanswered >= MAX_EMPTY_FOLLOWS:
                    raise StreamUnavailable(f"stream {sid!r}: no home answered as its primary")
        except StreamError:
            self._counters.add("stream_feeds_lost")
        finally:
            if self._feeds.get(sid) is feed:
                del self._feeds[sid]
            async with feed.changed:
                feed.changed.notify_all()

    async def close(self) -> None:
        await self._loops.close()
        self._feeds.clear()
