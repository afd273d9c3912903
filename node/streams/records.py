"""`StreamBook`: a node's use of stream records (`records.stream`): finding a stream's record, making
one (choosing its homes: the nodes closest to the stream's id, this one included if it is), listing
every stream on the mesh (the directory's 16 shards), and keeping the records of this node's streams
announced.

Two nodes making one stream at once each sign a record; every node takes the same one (the earliest
made, then the lowest creator id), so they agree on its homes. A record is used only if its homes are
plausibly the stream's: each one among the k nodes closest to the stream's id that this node's own
lookup finds (so a node cannot send a stream to homes of its choosing without grinding node ids near
its key, as for any DHT key, while a stream outlives the mesh's growth until k closer nodes joined).
"""

import ipaddress
import socket
import time

from dhtmesh.node.dht import DhtNode, PutRefused
from dhtmesh.node.records.directory import read_directory
from dhtmesh.node.records.kind import InvalidRecord, value_id_of
from dhtmesh.node.records.rules import check_value
from dhtmesh.node.records.stream import KIND, MAX_HOMES, STREAMS, StreamRecord, decode_stream, stream_id
from dhtmesh.node.routing.contact import distance
from dhtmesh.node.streams.errors import BadStreamRequest
from dhtmesh.node.values.value import InvalidValue, Value, value_from_wire

Home = tuple[bytes, str, int]


class StreamBook:
    def __init__(self, node: DhtNode) -> None:
        self._node = node
        self._known: dict[str, tuple[StreamRecord, Value]] = {}  # checked: a stream's homes never change

    async def find(self, sid: str, carried: object = None) -> StreamRecord | None:
        """The stream's record (checked), from the DHT, else the signed value a request `carried` (in
        `Value.to_wire` form: a record just made may not have reached every replica of its key yet)."""
        known = self._known.get(sid)
        if known is not None:
            return known[0]
        key = STREAMS.key_for(stream_id(sid))
        values = await self._node.get(key, value_id_of(stream_id(sid)), KIND.type)
        if not values and carried is not None:
            values = _carried(key, carried)
        found = sorted(
            ((record, value) for record, value in _records(values) if record.sid == sid),
            key=lambda pair: (pair[0].created, pair[0].creator),
        )
        for record, value in found:
            if await self._plausible(record):
                self._known[sid] = (record, value)
                return record
            self._node.counters.add("stream_records_implausible")
        return None

    def wire(self, sid: str) -> list | None:
        """The stream's signed record, as a request carries it to a home."""
        known = self._known.get(sid)
        return None if known is None else known[1].to_wire()

    async def keep(self, sid: str) -> None:
        """Keep announcing the stream's record from this node (one of its homes), so that it outlives
        the node that made it."""
        known = self._known.get(sid)
        if known is None:
            return
        record, value = known
        try:
            await self._node.put(KIND.key_for(record), value, permanent=True)
        except (PutRefused, InvalidValue):
            self._node.counters.add("stream_records_not_kept")

    async def create(self, sid: str) -> StreamRecord:
        """The stream's record, made and announced if the mesh has none."""
        found = await self.find(sid)
        if found is not None:
            return found
        closest = await self._closest(sid)
        homes = tuple((c_id, host, port) for c_id, host, port in closest[:MAX_HOMES])
        record = StreamRecord(sid, self._node.node_id, homes, int(time.time()))
        value = KIND.sign(self._node.identity, record, 1)
        try:
            await self._node.put(KIND.key_for(record), value, permanent=True)
        except PutRefused as refusal:  # another node's record holds the name, one no node uses (implausible)
            self._node.counters.add("stream_records_squatted")
            raise BadStreamRequest(f"the name {sid!r} is held by an unusable record: {refusal}") from refusal
        return await self.find(sid) or record

    async def names(self) -> list[str]:
        return sorted({record.sid for record, _ in _records(await read_directory(self._node, STREAMS))})

    async def _closest(self, sid: str) -> list[Home]:
        target = stream_id(sid)
        contacts = await self._node.lookup(target)
        nodes = {c.node_id: (c.node_id, c.host, c.port) for c in contacts}
        me = self._own_home(next(iter(nodes.values()), None))
        nodes[me[0]] = me
        return sorted(nodes.values(), key=lambda home: distance(home[0], target))

    def _own_home(self, peer: Home | None) -> Home:
        """This node as a home. Bound to an unspecified address (0.0.0.0, the default), it names itself
        by the address it reaches `peer` from (what the system routes by: no packet is sent), or
        loopback when it knows no peer."""
        host, port = self._node.address[:2]
        if ipaddress.ip_address(host).is_unspecified:
            host = _local_address_towards(peer[1] if peer else None, ipv6=":" in host)
        return self._node.node_id, host, port

    async def _plausible(self, record: StreamRecord) -> bool:
        """Whether each home is among the k nodes closest to the stream's id that this node finds (the
        homes aside): a node cannot place a stream on homes of its choosing without ids near the
        stream's, and a stream made when the mesh was small stays usable until k closer nodes joined."""
        target = stream_id(record.sid)
        homes = {home[0] for home in record.homes}
        others = [distance(node[0], target) for node in await self._closest(record.sid) if node[0] not in homes]
        k = self._node.config.k
        return all(sum(d < distance(home, target) for d in others) < k for home in homes)


def _local_address_towards(peer_host: str | None, ipv6: bool) -> str:
    loopback = "::1" if ipv6 else "127.0.0.1"
    if peer_host is None:
        return loopback
    family = socket.AF_INET6 if ":" in peer_host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((peer_host, 9))  # a UDP connect only picks the route and source address
            return str(probe.getsockname()[0])
    except OSError:
        return loopback


def _carried(key: bytes, carried: object) -> list[Value]:
    """The carried value, if it is a valid record under `key` (checked as any value reaching a node)."""
    try:
        value = value_from_wire(carried)
        check_value(key, value)
    except InvalidValue:
        return []
    return [value]


def _records(values: list[Value]) -> list[tuple[StreamRecord, Value]]:
    records = []
    for value in values:
        if value.type != KIND.type:
            continue
        try:
            records.append((decode_stream(value.data), value))
        except InvalidRecord:
            continue  # values were checked on arrival; guards against a rule change between versions
    return records
