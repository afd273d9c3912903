"""`Streams`: the mesh's data streams as a node's service (the interface the routes use).

A call is checked here (the token, by `accounts.verify`; the sid, ids, meta and sizes), then sent to
the stream's primary: this node's own `Homes` if it is the one, else over a link to it with the
user's token, which the primary verifies again (so no node acts for a user without the user's token).
The primary is the first reachable home in the stream's record; a home that is not the primary says
which home to try (`NotPrimary`), and a home that cannot be reached is named to the next one tried as
down, which may then claim the stream (`home.Homes`). The node remembers which home answered.
"""

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from dhtmesh.node.accounts.service import Accounts
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.records.stream import MAX_SID, StreamRecord
from dhtmesh.node.streams import ids
from dhtmesh.node.streams.errors import (
    BadStreamRequest,
    EntryTooLarge,
    StreamError,
    StreamUnavailable,
    UnknownStream,
)
from dhtmesh.node.streams.feeds import Feeds
from dhtmesh.node.streams.home import REPLICA_TIMEOUT, Homes, NotPrimary, check_batch
from dhtmesh.node.streams.lanes import check_lane
from dhtmesh.node.streams.links import LinkDown, Links
from dhtmesh.node.streams.log import Row, StreamLog
from dhtmesh.node.streams.records import StreamBook
from dhtmesh.node.streams.replica import ReplicaService, error_kind
from dhtmesh.node.streams.retention import checked_meta
from dhtmesh.node.streams.wire import FOLLOW, MAX_ENTRY
from dhtmesh.node.tasks import TaskSet

MAX_COUNT = 10_000  # entries one read returns per stream
MAX_WAIT = 300.0  # seconds a read may block
MAX_ACK_WAIT = 86_400.0  # seconds a group's entry may stay unacked before it is delivered again
MAX_NAMES_CHECKED = 32  # streams whose liveness `names` asks at once
FOLLOW_WAIT = 5.0  # seconds a round of a followed read waits for entries before it answers none
FOLLOW_COUNT = 1000  # entries a round of a followed read answers at most
FOLLOW_PAUSE = 1.0  # seconds at least between the starts of two rounds of a followed read that found nothing
_ERRORS: dict[str, type[StreamError]] = {
    "unknown": UnknownStream,
    "large": EntryTooLarge,
    "unavailable": StreamUnavailable,
    "bad": BadStreamRequest,
}


@dataclass(frozen=True, slots=True)
class Entry:
    sid: str
    id: str
    data: bytes


@dataclass(frozen=True)
class StreamInfo:
    sid: str
    length: int
    bytes: int
    first: Entry | None
    last: Entry | None
    last_generated_id: str
    entries_added: int
    max_deleted_id: str
    groups: int
    meta: dict
    homes: list[str]


def check_sid(sid: object) -> str:
    if not (isinstance(sid, str) and 0 < len(sid.encode()) <= MAX_SID and sid.isprintable()):
        raise BadStreamRequest(f"a stream id is 1 to {MAX_SID} bytes of printable text")
    return sid


def _count(count: object) -> int:
    if not (type(count) is int and 0 < count):
        raise BadStreamRequest("count must be a whole number above 0")
    return min(count, MAX_COUNT)


class Streams:
    MAX_ENTRY = MAX_ENTRY

    def __init__(self, node: DhtNode, accounts: Accounts) -> None:
        self.node = node
        self.accounts = accounts
        self.book = StreamBook(node)
        self.links = Links(node.identity, node.counters)
        path = node.data_dir / "streams.sqlite3" if node.data_dir else None
        self.homes = Homes(node.node_id, StreamLog(path), self.links, self.book, self._verify, node.counters)
        self.replica = ReplicaService(node.identity, self.homes, self.serve, self.serve_follow, node.counters)
        self._primary: dict[str, int] = {}  # sid -> index of the home that answered last
        self._tasks = TaskSet(node.counters)  # the reads of one multi-stream read, awaited by it
        self.feeds = Feeds(self._fetch, self._follow, node.counters)

    async def _verify(self, token: object) -> str:
        if not isinstance(token, str):
            raise BadStreamRequest("a token is text")
        return await self.accounts.verify(token)  # type: ignore[attr-defined]

    # ---- the interface -----------------------------------------------------------------------

    async def names(self, token: str) -> list[str]:
        await self._verify(token)
        limit = asyncio.Semaphore(MAX_NAMES_CHECKED)

        async def live(sid: str) -> bool:
            async with limit:
                try:
                    return bool(await self._call(token, sid, "s.live", {}))
                except UnknownStream:
                    return False
                except StreamError:
                    return True  # unreachable now: listed, as its record lives

        sids = await self.book.names()
        alive = await asyncio.gather(*(live(sid) for sid in sids))
        return [sid for sid, ok in zip(sids, alive, strict=True) if ok]

    async def info(self, token: str, sid: str) -> StreamInfo:
        await self._verify(token)
        record = await self._record(check_sid(sid))
        found = await self._call(token, sid, "s.info", {}, record)
        return StreamInfo(
            sid,
            found["length"],
            found["bytes"],
            _entry(sid, found["first"]),
            _entry(sid, found["last"]),
            ids.text(tuple(found["last_generated_id"])),
            found["entries_added"],
            ids.text(tuple(found["max_deleted_id"])),
            found["groups"],
            found["meta"],
            [home[0].hex() for home in record.homes],
        )

    async def create(self, token: str, sid: str, meta: dict, override: bool = False) -> dict:
        await self._verify(token)
        checked_meta(meta)
        record = await self.book.create(check_sid(sid))
        return await self._call(token, sid, "s.meta", {"meta": meta, "override": bool(override)}, record)

    async def delete(self, token: str, sid: str) -> None:
        await self._verify(token)
        await self._call(token, check_sid(sid), "s.delete", {})

    async def append(
        self,
        token: str,
        sid: str,
        entries: Sequence[tuple[bytes, str | None]],
        lane: tuple[bytes, int] | None = None,
    ) -> list[str]:
        """The new entries' ids. Appends naming a `lane` (its id, and this append's place in it) may be
        in flight together: they get their ids in the lane's order (`lanes.Lanes`)."""
        await self._verify(token)
        check_lane(lane)
        batch = [(bytes(data), explicit) for data, explicit in entries]
        check_batch(batch)
        for _, explicit in batch:
            if explicit is not None:
                ids.parse(explicit)
        record = await self.book.create(check_sid(sid))
        args = {"entries": [list(entry) for entry in batch], "lane": None if lane is None else [*lane]}
        return await self._call(token, sid, "s.append", args, record)

    async def read(
        self,
        token: str,
        cursors: dict[str, str],
        count: int,
        timeout: float = 0.0,  # noqa: ASYNC109 (the interface's: a read waits up to it for entries)
    ) -> list[Entry]:
        await self._verify(token)
        count, wait = _count(count), _seconds(timeout, MAX_WAIT)
        starts = {check_sid(sid): _cursor(cursor) for sid, cursor in cursors.items()}
        if len(starts) == 1:
            ((sid, after),) = starts.items()
            return await self._read(token, sid, after, count, wait)
        reads = [
            self._tasks.spawn(_outcome(self._read(token, sid, after, count, wait))) for sid, after in starts.items()
        ]
        try:
            pending = set(reads)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(task.result()[0] for task in done):
                    break
        finally:
            for task in reads:
                task.cancel()
            await asyncio.gather(*reads, return_exceptions=True)
        outcomes = [task.result() for task in reads if task.done() and not task.cancelled()]
        entries = [entry for found, _ in outcomes for entry in found]
        failure = next((error for _, error in outcomes if error is not None), None)
        if not entries and failure is not None:
            raise failure
        return entries

    async def _read(self, token: str, sid: str, after: str | list, count: int, wait: float) -> list[Entry]:
        if await self.book.find(sid) is None:
            return []  # unknown streams: no entries
        try:
            rows = None
            if wait > 0:
                after, rows = await self.feeds.read(token, sid, after, count, wait)
            if rows is None:
                _, rows = await self._fetch(token, sid, after, count, wait)
        except UnknownStream:
            return []
        return [Entry(sid, ids.text(entry_id), data) for entry_id, data in rows]

    async def _fetch(
        self, token: str, sid: str, after: str | list, count: int, wait: float
    ) -> tuple[ids.Id, list[tuple[ids.Id, bytes]]]:
        """Committed entries above `after` from the stream's primary, and the cursor after them."""
        found = await self._call(token, sid, "s.read", {"after": after, "count": count, "wait": wait})
        return tuple(found["cursor"]), [((ms, seq), data) for ms, seq, data in found["rows"]]  # type: ignore[return-value]

    async def _follow(
        self, token: str, sid: str, after: list
    ) -> AsyncIterator[tuple[ids.Id, list[tuple[ids.Id, bytes]]]]:
        """Committed entries above `after` from the stream's primary as they commit (a followed read:
        one request, answered at each commit), with the cursor after them. Ends when the home asked says
        another is the primary (the next follow asks that one); raises StreamError when it cannot be
        followed (the caller then reads through `_call`, which finds a live primary)."""
        record = await self._record(sid)
        home = record.homes[self._primary.get(sid, 0)]
        body = {"sid": sid, "token": token, "down": [], "record": self.book.wire(sid), "after": after}
        if home[0] == self.node.node_id:
            answers = self.serve_follow(body)
        else:
            answers = self.links.follow(home, FOLLOW, body, REPLICA_TIMEOUT + FOLLOW_WAIT)
        try:
            async with contextlib.aclosing(answers):
                async for reply in answers:
                    if "ok" in reply:
                        yield _followed(reply["ok"])
                    elif reply.get("err") == "not_primary" and _valid(reply.get("primary"), record.homes, []):
                        self._primary[sid] = reply["primary"]
                        return
                    else:
                        raise _refusal(reply)
        except LinkDown as error:
            raise StreamUnavailable(f"stream {sid!r}: its primary could not be followed: {error}") from error

    async def serve_follow(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A followed read on this node as a home: a read's answer each time entries commit (and every
        FOLLOW_WAIT seconds without any, so the caller knows it lives), until a round fails, its error the
        last answer. Each round is a read of its own, checks included (the token's expiry among them)."""
        self.node.counters.add("stream_follows")
        after = args.get("after")
        while True:
            began = time.monotonic()
            reply = await self.serve(FOLLOW, {**args, "after": after, "count": FOLLOW_COUNT, "wait": FOLLOW_WAIT})
            yield reply
            if "ok" not in reply:
                return
            after = reply["ok"]["cursor"]
            if not reply["ok"]["rows"]:
                # A round that found nothing without waiting (a deleted stream, whose reads do not wait;
                # the primary's waiting readers all taken): the next one after a pause. At once, they
                # were a busy loop, and on this node's own feed one that never yielded.
                await asyncio.sleep(max(0.0, FOLLOW_PAUSE - (time.monotonic() - began)))

    async def latest(self, token: str, sid: str, count: int) -> list[Entry]:
        await self._verify(token)
        record = await self.book.find(check_sid(sid))
        if record is None:
            return []
        rows = await self._call(token, sid, "s.latest", {"count": _count(count)}, record)
        return [Entry(sid, ids.text((ms, seq)), data) for ms, seq, data in rows]

    async def group_read(
        self,
        token: str,
        sid: str,
        group: str,
        consumer: str,
        count: int,
        timeout: float,  # noqa: ASYNC109 (the interface's, as `read`'s)
        ack_wait: float = 30.0,
    ) -> list[Entry]:
        await self._verify(token)
        args = {
            "group": group,
            "consumer": consumer,
            "count": _count(count),
            "ack_wait": _seconds(ack_wait, MAX_ACK_WAIT),
            "wait": _seconds(timeout, MAX_WAIT),
        }
        rows = await self._call(token, check_sid(sid), "s.gread", args)
        return [Entry(sid, ids.text((ms, seq)), data) for ms, seq, data in rows]

    async def group_ack(self, token: str, sid: str, group: str, entry_ids: list[str]) -> int:
        await self._verify(token)
        parsed = [list(ids.parse(entry_id)) for entry_id in entry_ids[:MAX_COUNT]]
        return await self._call(token, check_sid(sid), "s.gack", {"group": group, "ids": parsed})

    async def close(self) -> None:
        await self.feeds.close()
        await self._tasks.close()
        await self.links.close()
        await self.homes.close()

    # ---- to the primary ----------------------------------------------------------------------

    async def _record(self, sid: str) -> StreamRecord:
        record = await self.book.find(sid)
        if record is None:
            raise UnknownStream(f"no stream {sid!r}")
        return record

    async def _call(
        self, token: str, sid: str, op: str, args: dict[str, Any], record: StreamRecord | None = None
    ) -> Any:
        """The primary's answer to `op`, found by trying the stream's homes (see the module's docstring)."""
        record = record or await self._record(sid)
        homes = record.homes
        down: list[bytes] = []
        index = self._primary.get(sid, 0)
        timeout = REPLICA_TIMEOUT + float(args.get("wait", 0.0))
        for _ in range(2 * len(homes) + 1):
            home = homes[index]
            body = {**args, "sid": sid, "token": token, "down": down, "record": self.book.wire(sid)}
            if home[0] == self.node.node_id:
                reply = await self.serve(op, body)
            else:
                try:
                    reply = await self.links.request(home, op, body, timeout)
                except LinkDown:
                    reply = {"err": "down"}
            if "ok" in reply:
                self._primary[sid] = index
                return reply["ok"]
            if reply.get("err") == "not_primary" and _valid(reply.get("primary"), homes, down):
                index = reply["primary"]
                continue
            if reply.get("err") not in ("down", "not_primary"):
                raise _refusal(reply)
            if home[0] not in down:
                down.append(home[0])
            index = next((i for i, other in enumerate(homes) if other[0] not in down), -1)
            if index < 0:
                break
        raise StreamUnavailable(f"no home of stream {sid!r} serves it now")

    async def serve(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A user op on this node as a home (from this node, or forwarded by another with the token)."""
        try:
            user = await self._verify(args["token"])
        except StreamError:
            raise
        except Exception as error:  # the accounts' BadToken: the forwarding node's user is not ours
            return {"err": "unavailable", "msg": f"a home refused the token: {error}"}
        try:
            record = await self.homes.record(check_sid(args["sid"]), args.get("record"))
            down = [node_id for node_id in args.get("down", []) if isinstance(node_id, bytes)][:8]
            return {"ok": await self._op(op, record, down, args, user)}
        except NotPrimary as refusal:
            return {"err": "not_primary", "primary": refusal.primary, "term": refusal.term}
        except StreamError as error:
            return {"err": error_kind(error), "msg": str(error)}

    async def _op(self, op: str, record: StreamRecord, down: list[bytes], args: dict[str, Any], user: str) -> Any:
        homes = self.homes
        if op == "s.append":
            entries = [(data, explicit) for data, explicit in args["entries"]]
            check_batch(entries)
            appended = await homes.append(record, down, entries, check_lane(args.get("lane")), user)
            return [ids.text(entry_id) for entry_id in appended]
        if op in ("s.read", FOLLOW):  # a followed read's round: its waits are the port's follows, not reads
            after = args["after"] if args["after"] == "$" else list(args["after"])
            count, wait = _count(args["count"]), _seconds(args["wait"], MAX_WAIT)
            cursor, rows = await homes.read(record, down, after, count, wait, counted=op != FOLLOW)
            return {"cursor": [*cursor], "rows": _rows(rows)}
        if op == "s.latest":
            return _rows(await homes.latest(record, down, _count(args["count"])))
        if op == "s.info":
            return await homes.info(record, down)
        if op == "s.meta":
            return await homes.set_meta(record, down, checked_meta(args["meta"]), bool(args["override"]))
        if op == "s.delete":
            await homes.delete(record, down)
            return True
        if op == "s.live":
            return await homes.live(record, down)
        if op == "s.gread":
            rows = await homes.group_read(
                record, down, args["group"], args["consumer"], _count(args["count"]), _seconds(args["wait"], MAX_WAIT),
                _seconds(args["ack_wait"], MAX_ACK_WAIT),
            )  # fmt: skip
            return _rows(rows)
        if op == "s.gack":
            acked = [ids.parse(f"{ms}-{seq}") for ms, seq in args["ids"][:MAX_COUNT]]
            return await homes.group_ack(record, down, args["group"], acked)
        raise BadStreamRequest(f"unknown op {op!r}")


async def _outcome(reading: Awaitable[list[Entry]]) -> tuple[list[Entry], StreamError | None]:
    """A read's entries, or its refusal as a value (a task of the task set that raises is logged as a bug)."""
    try:
        return await reading, None
    except StreamError as error:
        return [], error


def _seconds(raw: object, limit: float) -> float:
    """A time span from a caller: a number from 0 to `limit` (anything else is 0)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return 0.0
    return min(max(float(raw), 0.0), limit)


def _refusal(reply: dict[str, Any]) -> StreamError:
    """A home's error answer as the error its kind names (`replica.error_kind` made it)."""
    return _ERRORS.get(reply.get("err"), StreamUnavailable)(reply.get("msg", "refused"))


def _followed(found: Any) -> tuple[ids.Id, list[tuple[ids.Id, bytes]]]:
    """A followed read's answer: the cursor and the entries; raises StreamUnavailable if it is malformed
    (a home's answer, checked as any peer's)."""
    try:
        cursor_ms, cursor_seq = found["cursor"]
        rows = [((_part(ms), _part(seq)), _bytes(data)) for ms, seq, data in found["rows"]]
        return (_part(cursor_ms), _part(cursor_seq)), rows
    except (KeyError, TypeError, ValueError) as error:
        raise StreamUnavailable(f"a home's answer to a followed read is malformed: {error}") from error


def _part(raw: object) -> int:
    if type(raw) is int and 0 <= raw <= ids.MAX_PART:
        return raw
    raise ValueError("an id's part is a whole number")


def _bytes(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    raise ValueError("an entry is bytes")


def _valid(index: object, homes: tuple, down: list[bytes]) -> bool:
    return type(index) is int and 0 <= index < len(homes) and homes[index][0] not in down


def _cursor(cursor: str) -> str | list:
    if cursor == "$":
        return "$"
    return list(ids.ZERO if cursor in ("0", "-") else ids.parse(cursor))


def _rows(rows: list[Row]) -> list[list]:
    return [[ms, seq, data] for (ms, seq), _, data in rows]


def _entry(sid: str, row: list | None) -> Entry | None:
    return None if row is None else Entry(sid, ids.text((row[0], row[1])), row[2])
