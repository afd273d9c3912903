"""What registering, pinging and reporting height or bandwidth do to a farmer record, and what the
record says about a farmer now: dataserv's develop-branch rules, on integer Unix seconds.

These are pure functions: the farmer's side computes the next record with them and signs it; a node
that relays the change checks that the record it was handed is the one these rules give.
"""

from dataclasses import replace

from dhtmesh.node.errors import ServiceError
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, FarmerRecord

ONLINE_TIME = 300  # seen within 5 minutes: online
MAX_PING = 60  # a ping sooner than this after the last one is accepted without effect
SHARD_BYTES = 128 * 1024 * 1024  # one unit of height


class HeightOverLimit(ServiceError, ValueError):
    """A height above dataserv's limit of 200,000 shards (about 25 TB)."""


def registered(node_id: bytes, payout_addr: str, now: int, ip: str = "") -> FarmerRecord:
    return FarmerRecord(node_id, payout_addr, reg_time=now, last_seen=now, ip=ip)


def pinged(record: FarmerRecord, now: int, ip: str = "") -> FarmerRecord:
    """The record after a ping: unchanged within `MAX_PING` of the last one; otherwise seen now, with the
    time since the last ping counted as uptime, at most `ONLINE_TIME` of it (a farmer that went quiet
    for an hour was not online all that hour)."""
    since = now - record.last_seen
    if since < MAX_PING:
        return record
    return replace(record, last_seen=now, uptime=record.uptime + min(since, ONLINE_TIME), ip=ip or record.ip)


def seen(record: FarmerRecord, now: int, ip: str = "") -> FarmerRecord:
    """A height or bandwidth report also counts as a ping, and always moves last_seen to now. Unlike
    dataserv, whose report moved last_seen without counting the time since as uptime, the gap (at most
    `ONLINE_TIME`) is counted, so a farmer that reports often is not shown as mostly offline."""
    after = pinged(record, now, ip)
    if now <= after.last_seen:
        return after
    uptime = after.uptime + min(now - after.last_seen, ONLINE_TIME)
    return replace(after, last_seen=now, uptime=uptime, ip=ip or after.ip)


def with_height(record: FarmerRecord, height: int, now: int, ip: str = "") -> FarmerRecord:
    if height > HEIGHT_LIMIT:
        raise HeightOverLimit(f"height {height} is over the limit of {HEIGHT_LIMIT}")
    return replace(seen(record, now, ip), height=height)


def with_bandwidth(record: FarmerRecord, upload: int, download: int, now: int, ip: str = "") -> FarmerRecord:
    return replace(seen(record, now, ip), bandwidth_upload=upload, bandwidth_download=download)


def is_online(record: FarmerRecord, now: int) -> bool:
    return now - record.last_seen <= ONLINE_TIME


def uptime_percent(record: FarmerRecord, now: int) -> float:
    """Share of the time since registration the farmer was seen online, the current stretch included."""
    lifetime = now - record.reg_time
    if lifetime < 1:
        return 100.0
    current = min(max(0, now - record.last_seen), ONLINE_TIME)
    return round(min(100.0, 100 * (record.uptime + current) / lifetime), 3)


def capacity_bytes(record: FarmerRecord) -> int:
    return record.height * SHARD_BYTES
