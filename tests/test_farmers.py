"""The farmer registry over real HTTP, against a mesh of 5 `dhtmesh run` processes: 50 farmers
registered through different nodes and listed identically by every node, changes seen mesh-wide,
dataserv's error rows, replays and forgeries refused, a SIGKILLed node that comes back with every farmer.

The processes are shared by the module (they take seconds to start and join); the restart test runs
last and leaves the mesh as it found it.
"""

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest

from dhtmesh.cli.farmer import current_record, recipient_id, signed_headers
from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.records import farmer_key, farmer_value_id, signed_farmer_value
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, FarmerRecord, next_signed
from dhtmesh.node.records.farmer_events import SHARD_BYTES, pinged, registered, with_bandwidth, with_height
from dhtmesh.node.values import Value, sign_value
from dhtmesh.proxy.farmer_routes import RECORD_HEADER, TERABYTE, record_header
from dhtmesh.testing import FAST, NodeProcess, ProcessGroup, eventually, run_cli, start_node

from support import get_json

pytestmark = pytest.mark.process

FARMERS = 50
MESH_SIZE = 5
CONVERGE = 15.0  # seconds allowed for a change to show on every node


async def wait_joined(urls: list[str], peers: int) -> None:
    """Until every node knows `peers` good contacts."""

    async def joined() -> bool:
        return all([(await get_json(url, "/node/info"))[1]["ipv4"]["good"] >= peers for url in urls])

    await eventually(joined, within=20, every=0.1)


@dataclass
class Mesh:
    group: ProcessGroup
    nodes: list[NodeProcess]
    farmers: list[Identity]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]


async def change(
    url: str, farmer: Identity, path: str, event: Callable[[FarmerRecord | None, int], FarmerRecord | None]
) -> tuple[int, str]:
    """What `dhtmesh farmer` does: read the current record, sign its next state, send it signed."""
    async with aiohttp.ClientSession(url) as session:
        current = await current_record(session, farmer.node_id)
        record = event(current[1] if current else None, int(time.time()))
        signed = next_signed(farmer, current, record) if record is not None else None
        headers = signed_headers(farmer, path, signed, await recipient_id(session))
        async with session.get(path, headers=headers) as response:
            return response.status, await response.text()


async def register(url: str, farmer: Identity, payout: str | None = None) -> tuple[int, str]:
    payout = payout or node_address(farmer.node_id)
    path = f"/api/register/{farmer.node_id.hex()}/{payout}"
    return await change(url, farmer, path, lambda _, now: registered(farmer.node_id, payout, now))


def stable(listing: dict) -> list[tuple]:
    """A listing without the fields that tick with the clock."""
    fields = ("nodeid", "payout_addr", "reg_time", "height", "bandwidth_upload", "bandwidth_download", "ip")
    return [tuple(farmer[name] for name in fields) for farmer in listing["farmers"]]


async def converged_listings(urls: list[str], done: Callable[[list[tuple]], bool]) -> list[tuple]:
    """Poll every node's /api/online/json until all agree and `done` holds; return the listing."""
    deadline = time.monotonic() + CONVERGE
    while True:
        listings = [stable((await get_json(url, "/api/online/json"))[1]) for url in urls]
        if all(listing == listings[0] for listing in listings) and done(listings[0]):
            return listings[0]
        assert time.monotonic() < deadline, f"nodes disagree: {[len(listing) for listing in listings]}"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    group = ProcessGroup(tmp_path_factory.mktemp("farmer-mesh"))
    try:
        first = group.launch("n0")
        nodes = [first] + [group.launch(f"n{i}", "-b", first.udp) for i in range(1, MESH_SIZE)]
        farmers = [Identity.generate() for _ in range(FARMERS)]
        asyncio.run(_register_all([node.url for node in nodes], farmers))
        yield Mesh(group, nodes, farmers)
    finally:
        group.stop()


async def _register_all(urls: list[str], farmers: list[Identity]) -> None:
    await wait_joined(urls, MESH_SIZE - 1)
    for start in range(0, len(farmers), 10):
        batch = farmers[start : start + 10]
        replies = await asyncio.gather(
            *(register(urls[(start + i) % len(urls)], farmer) for i, farmer in enumerate(batch))
        )
        assert [status for status, _ in replies] == [200] * len(batch), replies


# ---- one view of the whole mesh ---------------------------------------------------------------------


async def test_every_node_lists_the_50_farmers_registered_through_different_nodes(mesh: Mesh) -> None:
    wanted = {farmer.node_id.hex() for farmer in mesh.farmers}
    listing = await converged_listings(mesh.urls, lambda rows: wanted <= {row[0] for row in rows})
    assert len(listing) >= FARMERS
    for url in mesh.urls:
        status, total = await get_json(url, "/api/total")
        assert status == 200 and total["total_farmers"] == len(listing)
        async with aiohttp.ClientSession() as session, session.get(f"{url}/api/online") as response:
            lines = (await response.text()).splitlines()
        assert len(lines) == len(listing) and all("|  Last Seen: " in line for line in lines)
    # dataserv's /api/address: the node's own id as a base58check address, different on every node.
    addresses = {(await get_json(url, "/api/address"))[1]["address"] for url in mesh.urls}
    assert addresses == {node_address(bytes.fromhex(node.node_id)) for node in mesh.nodes}


async def test_heights_and_bandwidth_reported_through_one_node_show_on_every_node(mesh: Mesh) -> None:
    reported = {farmer.node_id.hex(): 10 * (i + 1) for i, farmer in enumerate(mesh.farmers[:5])}
    for i, farmer in enumerate(mesh.farmers[:5]):
        height = reported[farmer.node_id.hex()]
        path = f"/api/height/{farmer.node_id.hex()}/{height}"
        status, text = await change(mesh.urls[i], farmer, path, lambda r, now, h=height: with_height(r, h, now))
        assert (status, text) == (200, "Height accepted.")
    farmer = mesh.farmers[5]
    path = f"/api/bandwidth/{farmer.node_id.hex()}/1200/3400.5"
    status, text = await change(mesh.urls[2], farmer, path, lambda r, now: with_bandwidth(r, 1200, 3400, now))
    assert (status, text) == (200, "Bandwidth accepted.")

    def shows_reports(rows: list[tuple]) -> bool:
        by_id = {row[0]: row for row in rows}
        bandwidth = by_id.get(farmer.node_id.hex(), ())[4:6]
        return all(by_id.get(i, (0,) * 4)[3] == h for i, h in reported.items()) and bandwidth == (1200, 3400)

    listing = await converged_listings(mesh.urls, shows_reports)
    assert [row[3] for row in listing] == sorted((row[3] for row in listing), reverse=True)  # highest first
    status, total = await get_json(mesh.urls[4], "/api/total")
    assert total["total_TB"] == round(sum(row[3] for row in listing) * SHARD_BYTES / TERABYTE, 2)
    status, shown = await get_json(mesh.urls[3], f"/api/farmer/{node_address(mesh.farmers[0].node_id)}")
    assert status == 200 and shown["height"] == 10 and shown["nodeid"] == mesh.farmers[0].node_id.hex()


async def test_a_ping_within_a_minute_is_accepted_without_effect_and_needs_no_record(mesh: Mesh) -> None:
    farmer = mesh.farmers[10]
    path = f"/api/ping/{farmer.node_id.hex()}"
    async with aiohttp.ClientSession(mesh.urls[1]) as session:
        before = await current_record(session, farmer.node_id)
        headers = signed_headers(farmer, path, None, await recipient_id(session))
        async with session.get(path, headers=headers) as response:
            assert (response.status, await response.text()) == (200, "Ping accepted.")
        assert await current_record(session, farmer.node_id) == before
    # The client side computes the same: no new state, nothing to sign.
    assert before is not None and pinged(before[1], int(time.time())) == before[1]


# ---- dataserv's error rows ----------------------------------------------------------------------------


def error_cases(mesh: Mesh) -> dict[str, tuple[str, Identity | None, object, int, str]]:
    """name -> (path, signer (None: unsigned), record to attach ("auto": the right one), status, message)."""
    farmer, stranger = mesh.farmers[20], Identity.generate()
    fid, sid = farmer.node_id.hex(), stranger.node_id.hex()
    return {
        "register: bad node id": ("/api/register/nothex", farmer, None, 400, "Invalid node id"),
        "register: bad payout": (f"/api/register/{sid}/1BadPayoutAddress", stranger, None, 400, "payout"),
        "register: unsigned": (f"/api/register/{sid}", None, None, 401, "Invalid authentication"),
        "register: signed by another key": (f"/api/register/{sid}", farmer, None, 401, "not signed by this farmer"),
        "register: already registered": (f"/api/register/{fid}", farmer, "auto", 409, "already is registered"),
        "register: no signed record": (f"/api/register/{sid}", stranger, None, 400, "signed record"),
        "ping: bad node id": ("/api/ping/zz", farmer, None, 400, "Invalid node id"),
        "ping: unsigned": (f"/api/ping/{fid}", None, None, 401, "Invalid authentication"),
        "ping: unknown farmer": (f"/api/ping/{sid}", stranger, None, 404, "Farmer not found"),
        "height: bad number": (f"/api/height/{fid}/-3", farmer, None, 400, "height must be"),
        "height: unsigned": (f"/api/height/{fid}/5", None, None, 401, "Invalid authentication"),
        "height: unknown farmer": (f"/api/height/{sid}/5", stranger, None, 404, "Farmer not found"),
        "height: over the limit": (f"/api/height/{fid}/{HEIGHT_LIMIT + 1}", farmer, None, 413, "limit"),
        "height: no signed record": (f"/api/height/{fid}/77", farmer, None, 400, "signed record"),
        "height: record for another height": (f"/api/height/{fid}/78", farmer, "height 79", 400, "not what"),
        "height: garbage record": (f"/api/height/{fid}/80", farmer, "garbage", 400, RECORD_HEADER),
        "height: an exponent": (f"/api/height/{fid}/1e99999999", farmer, None, 400, "height must be"),
        "height: 10**30": (f"/api/height/{fid}/{10**30}", farmer, None, 413, "limit"),
        "bandwidth: 2**70": (f"/api/bandwidth/{fid}/{2**70}/1", farmer, None, 400, "signed record"),
        "bandwidth: bad number": (f"/api/bandwidth/{fid}/x/1", farmer, None, 400, "upload must be"),
        "bandwidth: unsigned": (f"/api/bandwidth/{fid}/1/1", None, None, 401, "Invalid authentication"),
        "bandwidth: unknown farmer": (f"/api/bandwidth/{sid}/1/1", stranger, None, 404, "Farmer not found"),
        "farmer: unknown": (f"/api/farmer/{sid}", None, None, 404, "Farmer not found"),
        "farmer: bad node id": ("/api/farmer/1234", None, None, 400, "Invalid node id"),
    }


def attached_record(mesh: Mesh, kind: object, current: tuple[Value, FarmerRecord] | None) -> str | None:
    farmer = mesh.farmers[20]
    if kind == "garbage":
        return base64.b64encode(b"\x93not a value").decode()
    if kind == "height 79" and current is not None:
        return record_header(signed_farmer_value(farmer, with_height(current[1], 79, int(time.time())), 99))
    if kind == "auto":
        return record_header(signed_farmer_value(farmer, registered(farmer.node_id, "x", int(time.time())), 1))
    return None


async def test_every_error_row_answers_its_status_and_a_json_error(mesh: Mesh) -> None:
    url = mesh.urls[3]
    async with aiohttp.ClientSession(url) as session:
        recipient = await recipient_id(session)
        current = await current_record(session, mesh.farmers[20].node_id)
        for name, (path, signer, kind, status, message) in error_cases(mesh).items():
            record = attached_record(mesh, kind, current)
            headers = sign_request(signer, "GET", path, b"", recipient, bound=record or "") if signer else {}
            if record is not None:
                headers[RECORD_HEADER] = record
            async with session.get(path, headers=headers) as response:
                body = await response.json(content_type=None)
                assert response.status == status, (name, body)
                assert message in body["err"], (name, body)
        # Refusals are counted, and the node still serves.
        status, info = await get_json(url, "/node/info")
        assert status == 200 and info["counters"]["http_bad_requests"] >= len(error_cases(mesh))


async def test_a_replayed_request_is_refused_and_a_request_for_one_node_is_refused_by_another(mesh: Mesh) -> None:
    farmer = mesh.farmers[30]
    path = f"/api/ping/{farmer.node_id.hex()}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{mesh.urls[0]}/api/address") as response:
            recipient = node_address(bytes.fromhex(mesh.nodes[0].node_id))
            assert (await response.json())["address"] == recipient
        headers = sign_request(farmer, "GET", path, b"", bytes.fromhex(mesh.nodes[0].node_id))
        async with session.get(mesh.urls[0] + path, headers=headers) as response:
            assert response.status == 200
        async with session.get(mesh.urls[0] + path, headers=headers) as response:
            assert response.status == 401 and "replayed" in (await response.json())["err"]
        async with session.get(mesh.urls[1] + path, headers=headers) as response:
            assert response.status == 401 and "bad signature" in (await response.json())["err"]


# ---- the DHT itself refuses forgeries -------------------------------------------------------------------


async def test_forged_records_pushed_straight_into_the_dht_over_udp_are_refused_by_every_node(mesh: Mesh) -> None:
    farmer = mesh.farmers[40]
    key = farmer_key(farmer.node_id)
    async with aiohttp.ClientSession(mesh.urls[0]) as session:
        current = await current_record(session, farmer.node_id)
    assert current is not None
    value, record = current
    mallory = Identity.generate()
    attacker = await start_node(FAST)
    try:
        assert await attacker.join([node.address for node in mesh.nodes]) >= MESH_SIZE
        replicas = [c for c in await attacker.lookup(key) if c.node_id.hex() in {n.node_id for n in mesh.nodes}]
        assert len(replicas) == MESH_SIZE
        now = int(time.time())
        forgeries = {
            # Mallory states the farmer's record with her own key.
            "signed by another key": sign_value(
                mallory, key, replace(value, data=replace(record, height=9).encode(), seq=value.seq + 5)
            ),
            # The farmer itself claims a year of history: well-formed and signed right, but replicas
            # holding its record know when it registered.
            "registered a year earlier": signed_farmer_value(
                farmer,
                replace(record, reg_time=record.reg_time - 365 * 86400, uptime=365 * 86400, last_seen=now),
                value.seq + 5,
            ),
            # Squatting the farmer's value id, or filling its shard, with another type of value.
            "unsigned value under a directory key": Value(farmer_value_id(farmer.node_id), b"squat", 0),
        }
        for name, forged in forgeries.items():
            accepted = [await attacker.store_on(contact, key, forged, 600.0) for contact in replicas]
            assert accepted == [False] * MESH_SIZE, name
    finally:
        await attacker.stop()
    for url in mesh.urls:
        status, shown = await get_json(url, f"/api/farmer/{farmer.node_id.hex()}")
        assert status == 200 and (shown["height"], shown["reg_time"]) == (record.height, record.reg_time)
        assert shown["uptime"] <= 100.0


# ---- farmers as nodes, and the CLI ------------------------------------------------------------------------


async def test_a_node_run_with_farmer_registers_itself_and_reports_its_height(mesh: Mesh) -> None:
    farmer_node = mesh.group.launch(
        "farmer", "-b", mesh.nodes[0].udp, "--farmer", "--height", "7", "--ping-interval", "0.5"
    )
    try:

        def listed(rows: list[tuple]) -> bool:
            wanted = (farmer_node.node_id, 7, farmer_node.address[0])
            return any((row[0], row[3], row[6]) == wanted for row in rows)

        await converged_listings(mesh.urls, listed)
    finally:
        farmer_node.process.kill()
        farmer_node.process.wait(timeout=10)
    # Gone, and still registered (it drops out of /api/online after 5 minutes).
    status, shown = await get_json(mesh.urls[2], f"/api/farmer/{farmer_node.node_id}")
    assert status == 200 and shown["height"] == 7


def test_the_cli_takes_a_farmer_through_its_life_against_any_node(mesh: Mesh, tmp_path: Path) -> None:
    identity_file = str(tmp_path / "farmer.json")
    assert run_cli("identity", "new", "-i", identity_file).returncode == 0
    steps = [
        (mesh.urls[0], ["register"], 0, '"height":0'),
        (mesh.urls[0], ["register"], 1, "409: Registration Failed: Address already is registered."),
        (mesh.urls[1], ["ping"], 0, "Ping accepted."),
        (mesh.urls[2], ["height", "25"], 0, "Height accepted."),
        (mesh.urls[3], ["bandwidth", "10", "20"], 0, "Bandwidth accepted."),
        (mesh.urls[4], ["height", str(HEIGHT_LIMIT + 1)], 1, "413: Height limit exceeded"),
        (mesh.urls[4], ["show"], 0, '"bandwidth_upload":10'),
    ]
    for url, action, code, expected in steps:
        done = run_cli("farmer", *action, "--url", url, "-i", identity_file)
        assert done.returncode == code, (action, done.stderr)
        assert expected in (done.stdout if code == 0 else done.stderr), (action, done.stdout, done.stderr)
    listing = run_cli("farmer", "online", "--json", "--url", mesh.urls[1])
    assert '"height":25' in listing.stdout
    garbage = run_cli("farmer", "height", "1", "2", "--url", mesh.urls[0], "-i", identity_file)
    assert garbage.returncode != 0 and garbage.stderr.startswith("dhtmesh: error:")


async def test_post_is_accepted_as_get_is_and_the_method_is_part_of_the_signature(mesh: Mesh) -> None:
    farmer = mesh.farmers[31]
    path = f"/api/ping/{farmer.node_id.hex()}"
    recipient = bytes.fromhex(mesh.nodes[2].node_id)
    async with aiohttp.ClientSession(mesh.urls[2]) as session:
        async with session.post(path, headers=sign_request(farmer, "POST", path, b"", recipient)) as response:
            assert (response.status, await response.text()) == (200, "Ping accepted.")
        async with session.post(path, headers=sign_request(farmer, "GET", path, b"", recipient)) as response:
            assert response.status == 401


async def test_a_flood_of_signed_requests_is_cut_off_with_429_and_the_node_keeps_serving(mesh: Mesh) -> None:
    """Signed requests are rate-limited per client before the signature check (so a flood from
    throwaway keys can neither burn CPU nor fill the replay guard); honest ones pass again a second later."""
    url, recipient = mesh.urls[1], bytes.fromhex(mesh.nodes[1].node_id)

    async def ping_as_stranger(session: aiohttp.ClientSession) -> int:
        stranger = Identity.generate()
        path = f"/api/ping/{stranger.node_id.hex()}"
        async with session.get(url + path, headers=sign_request(stranger, "GET", path, b"", recipient)) as response:
            return response.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        statuses = await asyncio.gather(*(ping_as_stranger(session) for _ in range(600)))
    assert set(statuses) == {404, 429} and statuses.count(429) >= 100
    await asyncio.sleep(1.5)
    farmer = mesh.farmers[32]
    path = f"/api/ping/{farmer.node_id.hex()}"
    status, text = await change(url, farmer, path, lambda record, now: pinged(record, now))
    assert (status, text) == (200, "Ping accepted.")


# ---- restart: last, it replaces a node of the shared mesh --------------------------------------------------


async def test_a_node_killed_and_restarted_loses_no_farmer(mesh: Mesh) -> None:
    victim = mesh.nodes[-1]
    victim.process.kill()
    victim.process.wait(timeout=10)
    restarted = mesh.group.launch("n4", "-b", mesh.nodes[0].udp)
    assert restarted.node_id == victim.node_id
    mesh.nodes[-1] = restarted
    wanted = {farmer.node_id.hex() for farmer in mesh.farmers}
    listing = await converged_listings(mesh.urls, lambda rows: wanted <= {row[0] for row in rows})
    assert len(listing) >= FARMERS
    for farmer in mesh.farmers:
        status, _ = await get_json(restarted.url, f"/api/farmer/{farmer.node_id.hex()}")
        assert status == 200
