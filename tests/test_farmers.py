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

from dhtmesh.api.records import RECORD_HEADER, record_header
from dhtmesh.client import Client
from dhtmesh.client.farmers import signed_headers
from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.records import farmer_key, farmer_value_id, signed_farmer_value
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, FarmerRecord, next_signed
from dhtmesh.node.records.farmer_events import SHARD_BYTES, pinged, registered, with_bandwidth, with_height
from dhtmesh.node.values import Value, sign_value
from dhtmesh.proxy.farmer_routes import TERABYTE
from dhtmesh.testing import FAST, NodeProcess, ProcessGroup, eventually, run_cli, start_node

from support import get_json

pytestmark = pytest.mark.process

FARMERS = 50
MESH_SIZE = 5
CONVERGE = 15.0  # seconds allowed for a change to show on every node


async def wait_joined(urls: list[str], peers: int) -> None:
    """Until every node knows `peers` good contacts."""

    async def joined() -> bool:
        for url in urls:
            async with Client(url) as client:
                if (await client.info())["ipv4"]["good"] < peers:
                    return False
        return True

    await eventually(joined, within=20, every=0.1)


@dataclass
class Mesh:
    group: ProcessGroup
    nodes: list[NodeProcess]
    farmers: list[Identity]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]


async def change_at(url: str, farmer: Identity, path: str, event: Callable[[FarmerRecord, int], FarmerRecord]) -> str:
    """What the client does for a change, to a path it would not write (a decimal number in it):
    the current record read, its next state signed, and the signed request sent."""
    async with Client(url) as client:
        current = await client.farmer_record(farmer.node_id)
        assert current is not None
        signed = next_signed(farmer, current, event(current[1], int(time.time())))
        headers = signed_headers(farmer, path, signed, await client.node_id())
    async with aiohttp.ClientSession() as session, session.get(url + path, headers=headers) as response:
        assert response.status == 200
        return await response.text()


async def register(url: str, farmer: Identity) -> dict:
    async with Client(url) as client:
        return await client.register(farmer)


def stable(farmers: list[dict]) -> list[tuple]:
    """A listing without the fields that tick with the clock."""
    fields = ("nodeid", "payout_addr", "reg_time", "height", "bandwidth_upload", "bandwidth_download", "ip")
    return [tuple(farmer[name] for name in fields) for farmer in farmers]


async def online(url: str) -> list[dict]:
    async with Client(url) as client:
        return await client.online_farmers()


async def shown(url: str, farmer_id: bytes) -> dict:
    async with Client(url) as client:
        return await client.farmer(farmer_id)


async def converged_listings(urls: list[str], done: Callable[[list[tuple]], bool]) -> list[tuple]:
    """Poll every node's /api/online/json until all agree and `done` holds; return the listing."""
    deadline = time.monotonic() + CONVERGE
    while True:
        listings = [stable(await online(url)) for url in urls]
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
        assert [reply["nodeid"] for reply in replies] == [farmer.node_id.hex() for farmer in batch]


# ---- one view of the whole mesh ---------------------------------------------------------------------


async def test_every_node_lists_the_50_farmers_registered_through_different_nodes(mesh: Mesh) -> None:
    wanted = {farmer.node_id.hex() for farmer in mesh.farmers}
    listing = await converged_listings(mesh.urls, lambda rows: wanted <= {row[0] for row in rows})
    assert len(listing) >= FARMERS
    addresses = set()
    for url in mesh.urls:
        async with Client(url) as client:
            assert (await client.total()).total_farmers == len(listing)
            lines = (await client.online()).splitlines()
            assert len(lines) == len(listing) and all("|  Last Seen: " in line for line in lines)
            addresses.add(await client.address())
    # dataserv's /api/address: the node's own id as a base58check address, different on every node.
    assert addresses == {node_address(bytes.fromhex(node.node_id)) for node in mesh.nodes}


async def test_heights_and_bandwidth_reported_through_one_node_show_on_every_node(mesh: Mesh) -> None:
    reported = {farmer.node_id.hex(): 10 * (i + 1) for i, farmer in enumerate(mesh.farmers[:5])}
    for i, farmer in enumerate(mesh.farmers[:5]):
        async with Client(mesh.urls[i]) as client:
            assert await client.set_height(farmer, reported[farmer.node_id.hex()]) == "Height accepted."
    farmer = mesh.farmers[5]
    path = f"/api/bandwidth/{farmer.node_id.hex()}/1200/3400.5"  # dataserv truncates a decimal
    text = await change_at(mesh.urls[2], farmer, path, lambda r, now: with_bandwidth(r, 1200, 3400, now))
    assert text == "Bandwidth accepted."

    def shows_reports(rows: list[tuple]) -> bool:
        by_id = {row[0]: row for row in rows}
        bandwidth = by_id.get(farmer.node_id.hex(), ())[4:6]
        return all(by_id.get(i, (0,) * 4)[3] == h for i, h in reported.items()) and bandwidth == (1200, 3400)

    listing = await converged_listings(mesh.urls, shows_reports)
    assert [row[3] for row in listing] == sorted((row[3] for row in listing), reverse=True)  # highest first
    async with Client(mesh.urls[4]) as client:
        total = await client.total()
    assert total.total_TB == round(sum(row[3] for row in listing) * SHARD_BYTES / TERABYTE, 2)
    # A farmer is named by its address too (the client names it by its node id).
    status, by_address = await get_json(mesh.urls[3], f"/api/farmer/{node_address(mesh.farmers[0].node_id)}")
    assert status == 200 and by_address["height"] == 10 and by_address["nodeid"] == mesh.farmers[0].node_id.hex()


async def test_a_ping_within_a_minute_is_accepted_without_effect_and_needs_no_record(mesh: Mesh) -> None:
    farmer = mesh.farmers[10]
    async with Client(mesh.urls[1]) as client:
        before = await client.farmer_record(farmer.node_id)
        assert await client.ping(farmer) == "Ping accepted."
        assert await client.farmer_record(farmer.node_id) == before
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
    async with Client(url) as client:
        recipient = await client.node_id()
        current = await client.farmer_record(mesh.farmers[20].node_id)
    async with aiohttp.ClientSession(url) as session:
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
    async with Client(url) as client:
        assert (await client.info())["counters"]["http_bad_requests"] >= len(error_cases(mesh))


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
    async with Client(mesh.urls[0]) as client:
        current = await client.farmer_record(farmer.node_id)
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
        listed = await shown(url, farmer.node_id)
        assert (listed["height"], listed["reg_time"]) == (record.height, record.reg_time)
        assert listed["uptime"] <= 100.0


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
    assert (await shown(mesh.urls[2], bytes.fromhex(farmer_node.node_id)))["height"] == 7


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
    async with Client(url) as client:
        assert await client.ping(mesh.farmers[32]) == "Ping accepted."


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
    async with Client(restarted.url) as client:
        for farmer in mesh.farmers:
            assert (await client.farmer(farmer.node_id))["nodeid"] == farmer.node_id.hex()
