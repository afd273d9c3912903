"""Pipelined appends in a lane (`streams.lanes`) over a mesh of four in-process nodes (real UDP and TCP
sockets, real SQLite): appends of one lane sent out of order through a node that is no home get their
ids in the lane's order; a lane whose earlier append failed, never came, or was forgotten fails every
later one, so nothing is appended behind a batch the writer must send again; a malformed lane is
refused."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dhtmesh.node.services import Services
from dhtmesh.node.streams import ids, lanes
from dhtmesh.node.streams.errors import BadStreamRequest, StreamUnavailable

from support import stream_services

TOKEN = "lane writer's token"


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[list[Services]]:
    async with stream_services(4, {TOKEN: "writer"}, root=tmp_path) as started:
        yield started


async def made(mesh: list[Services], sid: str) -> Services:
    """The stream made; a node that is none of its homes, which forwards every append."""
    await mesh[0].streams.create(TOKEN, sid, {})
    record = await mesh[0].streams.book.find(sid)
    assert record is not None
    homes = {home[0] for home in record.homes}
    return next(services for services in mesh if services.node.node_id not in homes)


def entry(n: int) -> list[tuple[bytes, None]]:
    return [(f"entry {n}".encode(), None)]


async def test_appends_of_a_lane_get_their_ids_in_its_order_whatever_order_they_arrive_in(
    mesh: list[Services],
) -> None:
    writer = await made(mesh, "ordered")
    lane = b"a lane of sixteen"
    # Places 3, 2, 1 are sent first: each waits at the primary for the one before it.
    later = [asyncio.create_task(writer.streams.append(TOKEN, "ordered", entry(n), (lane, n))) for n in (3, 2, 1)]
    await asyncio.sleep(0.2)
    first = await writer.streams.append(TOKEN, "ordered", entry(0), (lane, 0))
    appended = [first] + [await task for task in reversed(later)]
    assert [ids.parse(found[0]) for found in appended] == sorted(ids.parse(found[0]) for found in appended)
    read = await writer.streams.read(TOKEN, {"ordered": "0"}, 10)
    assert [item.data for item in read] == [f"entry {n}".encode() for n in range(4)]


async def test_once_an_append_of_a_lane_fails_every_later_one_fails_and_nothing_is_appended_behind_it(
    mesh: list[Services],
) -> None:
    writer = await made(mesh, "broken")
    lane = b"lane that breaks"
    await writer.streams.append(TOKEN, "broken", entry(0), (lane, 0))
    with pytest.raises(BadStreamRequest):  # place 1 fails at the primary: an explicit id below the last
        await writer.streams.append(TOKEN, "broken", [(b"entry 1", "1-1")], (lane, 1))
    with pytest.raises(StreamUnavailable):
        await writer.streams.append(TOKEN, "broken", entry(2), (lane, 2))
    read = await writer.streams.read(TOKEN, {"broken": "0"}, 10)
    assert [item.data for item in read] == [b"entry 0"]


async def test_a_lane_whose_earlier_append_never_comes_fails_the_later_ones(
    mesh: list[Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lanes, "WAIT", 0.3)
    writer = await made(mesh, "gap")
    lane = b"lane with a hole"
    await writer.streams.append(TOKEN, "gap", entry(0), (lane, 0))
    with pytest.raises(StreamUnavailable):  # place 1 is never sent
        await writer.streams.append(TOKEN, "gap", entry(2), (lane, 2))
    with pytest.raises(StreamUnavailable):  # nor does a place of an unknown lane other than its first pass
        await writer.streams.append(TOKEN, "gap", entry(5), (b"a lane never seen", 5))
    read = await writer.streams.read(TOKEN, {"gap": "0"}, 10)
    assert [item.data for item in read] == [b"entry 0"]


@pytest.mark.parametrize(
    "lane",
    [(b"", 0), (b"x" * 33, 0), (b"lane", -1), (b"lane", 1.5), ("text", 0), (b"lane",)],
    ids=["empty-id", "long-id", "negative-place", "float-place", "text-id", "no-place"],
)
async def test_a_malformed_lane_is_refused_before_anything_is_sent(mesh: list[Services], lane: tuple) -> None:
    writer = await made(mesh, "malformed")
    with pytest.raises(BadStreamRequest):
        await writer.streams.append(TOKEN, "malformed", entry(0), lane)  # type: ignore[arg-type]
    assert await writer.streams.read(TOKEN, {"malformed": "0"}, 10) == []


async def test_many_accounts_flooding_fresh_lanes_forget_their_own_not_a_light_writers() -> None:
    """Past the per-account bound an account's own oldest lane goes; past the total, the oldest of the
    account holding the most: twenty accounts opening lanes without end never forget a light writer's."""
    table = lanes.Lanes()
    async with table.turn("honest", "cam", (b"honest lane", 0)):
        pass
    for flooder in range(20):
        for n in range(lanes.MAX_LANES_PER_OWNER + 10):
            async with table.turn(f"flooder {flooder}", "spam", (n.to_bytes(16, "big"), 0)):
                pass
    assert len(table) <= lanes.MAX_LANES
    assert ("cam", b"honest lane") in table._owners["honest"]  # its next place passes at once
    async with table.turn("honest", "cam", (b"honest lane", 1)):
        pass
