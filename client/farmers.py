"""dataserv's farmer routes, as a client calls them. A change is made on the farmer's side, as
dataserv-client made it: the farmer's current signed record is read from the node, dataserv's rule
for the request applied (`node/records/farmer_events.py`), the new state signed with the farmer's
key and sent in a request the farmer signs too. The node only checks and stores it."""

import json
import time
from collections.abc import Callable
from typing import Any

from dhtmesh.api import paths
from dhtmesh.api.records import RECORD_HEADER, record_header
from dhtmesh.api.shapes import Total
from dhtmesh.api.value_json import ValueJsonError, value_from_json
from dhtmesh.client.errors import ApiError, BadAnswer, NotRegistered
from dhtmesh.client.transport import Transport
from dhtmesh.crypto.addresses import InvalidAddress, node_address, parse_node_id
from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.request_auth import sign_request
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, FarmerRecord, farmer_key, next_signed
from dhtmesh.node.records.farmer_events import pinged, registered, with_bandwidth, with_height
from dhtmesh.node.records.registry import find_record
from dhtmesh.node.records.rules import check_value
from dhtmesh.node.values.value import InvalidValue, Value

Current = tuple[Value, FarmerRecord]
# A farmer's change: its next record from the current one and the time, or None to send no record
# (the node refuses the request, and says why).
Change = Callable[[FarmerRecord, int], FarmerRecord | None]


class FarmerRoutes:
    """The `/api/*` routes; mixed into `Client`, which gives the transport and the node id's cache."""

    transport: Transport
    _node_id: bytes | None

    # ---- reading --------------------------------------------------------------------------------

    async def address(self) -> str:
        """The node's address (base58check of its node id)."""
        return str((await self.transport.document("GET", paths.ADDRESS)).get("address"))

    async def node_id(self) -> bytes:
        """The node's id: part of what a farmer signs. Asked once (`/api/address`), then kept: a node's
        id does not change while it runs, and every signed change needs it."""
        if self._node_id is None:
            try:
                self._node_id = parse_node_id(await self.address())
            except InvalidAddress as error:
                raise BadAnswer(f"the node gave a bad address: {error}") from error
        return self._node_id

    async def online(self) -> str:
        """`/api/online`: dataserv's HTML lines of the farmers seen in the last 5 minutes."""
        return await self.transport.text("GET", paths.ONLINE)

    async def online_farmers(self) -> list[dict[str, Any]]:
        """`/api/online/json`: the farmer JSON of each farmer seen in the last 5 minutes."""
        return list((await self.transport.document("GET", paths.ONLINE_JSON)).get("farmers", []))

    async def total(self) -> Total:
        """How many farmers are online, and their capacity in TB."""
        document = await self.transport.document("GET", paths.TOTAL)
        try:
            return Total(**document)
        except TypeError as error:
            raise BadAnswer(f"{paths.TOTAL}: the node's answer is not a total: {error}") from error

    async def farmer(self, farmer_id: bytes) -> dict[str, Any]:
        """One farmer's JSON, online or not, with its audit reputation (404: unknown)."""
        return await self.transport.document("GET", paths.farmer_path(paths.FARMER, farmer_id))

    async def farmer_audits(self, farmer_id: bytes) -> dict[str, Any]:
        """`{nodeid, reputation, audits}`: every published audit of the farmer, newest first."""
        return await self.transport.document("GET", paths.farmer_path(paths.FARMER_AUDITS, farmer_id))

    async def farmer_record(self, farmer_id: bytes) -> Current | None:
        """The farmer's signed record as the mesh holds it, checked here as every node checks it;
        None when the farmer is not registered."""
        try:
            text = await self.transport.text("GET", paths.farmer_path(paths.FARMER_RECORD, farmer_id))
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        try:
            value = value_from_json(json.loads(text))
            check_value(farmer_key(farmer_id), value)
        except (ValueError, ValueJsonError, InvalidValue) as error:
            raise BadAnswer(f"the node gave a record that does not check: {error}") from error
        return find_record([value], farmer_id)

    # ---- changes, signed by the farmer ----------------------------------------------------------

    async def register(self, farmer: Identity, payout: str | None = None, ip: str = "") -> dict[str, Any]:
        """Register the farmer (payout to its own address unless given): its farmer JSON. A farmer
        already registered is the node's 409."""
        farmer_id, payout = farmer.node_id, payout or node_address(farmer.node_id)
        signed = next_signed(farmer, None, registered(farmer_id, payout, int(time.time()), ip))
        path = paths.farmer_path(paths.REGISTER, farmer_id, payout_addr=payout)
        return await self.transport.document("GET", path, headers=await self._signed(farmer, path, signed))

    async def ping(self, farmer: Identity, ip: str = "") -> str:
        """Say the farmer is online: "Ping accepted."."""
        return await self._change(farmer, paths.PING, lambda record, now: pinged(record, now, ip))

    async def set_height(self, farmer: Identity, height: int, ip: str = "") -> str:
        """The farmer's capacity, in 128 MiB shards: "Height accepted." (413 over the limit)."""

        def change(record: FarmerRecord, now: int) -> FarmerRecord | None:
            return with_height(record, height, now, ip) if height <= HEIGHT_LIMIT else None

        return await self._change(farmer, paths.HEIGHT, change, height=height)

    async def set_bandwidth(self, farmer: Identity, upload: int, download: int, ip: str = "") -> str:
        """The farmer's measured bandwidth: "Bandwidth accepted."."""

        def change(record: FarmerRecord, now: int) -> FarmerRecord:
            return with_bandwidth(record, upload, download, now, ip)

        return await self._change(farmer, paths.BANDWIDTH, change, upload=upload, download=download)

    async def _change(self, farmer: Identity, template: str, change: Change, **fields: object) -> str:
        current = await self.farmer_record(farmer.node_id)
        if current is None:
            raise NotRegistered(farmer.node_id)
        record = change(current[1], int(time.time()))
        signed = next_signed(farmer, current, record) if record is not None else None
        path = paths.farmer_path(template, farmer.node_id, **fields)
        return await self.transport.text("GET", path, headers=await self._signed(farmer, path, signed))

    async def _signed(self, farmer: Identity, path: str, signed: Value | None) -> dict[str, str]:
        return signed_headers(farmer, path, signed, await self.node_id())


def signed_headers(farmer: Identity, path: str, signed: Value | None, recipient: bytes) -> dict[str, str]:
    """The headers of a GET to `path` on the node `recipient`: the farmer's signature, and the record
    (`signed`, when there is one) that it covers."""
    record = record_header(signed) if signed is not None else ""
    headers = sign_request(farmer, "GET", path, b"", recipient, bound=record)
    if record:
        headers[RECORD_HEADER] = record
    return headers
