"""`Lanes`: the order in which one writer's pipelined appends to a stream are given ids at the primary.

A push socket keeps several appends in flight (a round trip to the homes per entry, one at a time, was
most of a lone entry's latency). They travel as separate requests, forwarded through other nodes and
served concurrently, so the primary could otherwise number the second before the first. Each append
names its lane (a random id, one per socket) and its place in it (0, 1, 2 ...); the primary gives ids
to a lane's appends in that order: an append waits for the one before it to have its ids or to fail,
as long as the lane moves on (`WAIT` without progress: the one before never came). Once one fails, or
the one before never comes, every later append of the lane fails too, so a writer never finds a later
batch appended behind an earlier one it must send again: its socket is closed and it resends from the
first entry not acknowledged, in a new lane.

A lane is its writer's: it is keyed by the account that sends it (the token the primary verified), the
stream and its id, so no other account can reach it, whatever id it names. Lanes are bounded: an
account holds at most `MAX_LANES_PER_OWNER` (past it, its own least recently used one is forgotten), and
all at most `MAX_LANES` (past it, the least recently used lane of the account holding the most): one
account's flood of fresh lanes forgets its own, not an honest writer's. A forgotten lane's next append
waits for a place that never comes, and fails (a push socket starts a new lane whenever it has nothing
under way, so only a socket with appends under way has a lane to lose).
"""

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from dhtmesh.node.streams.errors import BadStreamRequest, StreamUnavailable

WAIT = 3.0  # seconds an append waits for its lane to move on (the one before it to have its ids)
MAX_LANES = 4096
MAX_LANES_PER_OWNER = 256
MAX_LANE_ID = 32  # bytes


@dataclass
class _Lane:
    next: int = 0  # the place whose turn it is
    broken: bool = False
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


def check_lane(raw: object) -> tuple[bytes, int] | None:
    """A request's lane, [id, place], or None when it names none; raises BadStreamRequest."""
    if raw is None:
        return None
    if not (isinstance(raw, list | tuple) and len(raw) == 2):
        raise BadStreamRequest("a lane is [id, place]")
    lane_id, place = raw
    if not (isinstance(lane_id, bytes) and 0 < len(lane_id) <= MAX_LANE_ID):
        raise BadStreamRequest(f"a lane id is 1 to {MAX_LANE_ID} bytes")
    if not (type(place) is int and 0 <= place < 1 << 63):
        raise BadStreamRequest("a lane's place is a whole number")
    return lane_id, place


class Lanes:
    def __init__(self) -> None:
        self._owners: dict[str, OrderedDict[tuple[str, bytes], _Lane]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @asynccontextmanager
    async def turn(self, owner: str, sid: str, lane: tuple[bytes, int] | None) -> AsyncIterator[None]:
        """Within: this append's turn in `owner`'s lane of stream `sid` (at once without a lane). Leaving
        passes the turn on; leaving by an exception breaks the lane."""
        if lane is None:
            yield
            return
        lane_id, place = lane
        found = self._lane(owner, sid, lane_id)
        async with found.changed:
            # WAIT without the lane moving on, not in all: counted from its arrival, an append behind
            # several that each waited at a busy stream lock failed while its lane moved steadily.
            while not (found.broken or found.next >= place):
                seen = found.next
                try:
                    async with asyncio.timeout(WAIT):
                        await found.changed.wait_for(lambda: found.broken or found.next != seen)  # noqa: B023
                except TimeoutError:
                    found.broken = True
            if found.broken or found.next != place:
                found.broken = True
                found.changed.notify_all()
                raise StreamUnavailable("an earlier append of this socket failed or never came: send again")
        try:
            yield
        except BaseException:
            found.broken = True
            raise
        finally:
            found.next = max(found.next, place + 1)
            async with found.changed:
                found.changed.notify_all()

    def _lane(self, owner: str, sid: str, lane_id: bytes) -> _Lane:
        owned = self._owners.setdefault(owner, OrderedDict())
        found = owned.get((sid, lane_id))
        if found is None:
            if len(owned) >= MAX_LANES_PER_OWNER:
                self._forget(owner)
            elif self._count >= MAX_LANES:
                self._forget(max(self._owners, key=lambda other: len(self._owners[other])))
            found = owned[(sid, lane_id)] = _Lane()
            self._count += 1
        owned.move_to_end((sid, lane_id))
        return found

    def _forget(self, owner: str) -> None:
        """The least recently used lane of `owner`'s."""
        owned = self._owners[owner]
        owned.popitem(last=False)
        self._count -= 1
        if not owned:
            del self._owners[owner]
