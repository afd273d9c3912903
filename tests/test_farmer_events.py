"""dataserv's farmer rules on records: ping throttling, uptime accounting, height limit, online window."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtmesh.crypto import Identity
from dhtmesh.crypto.addresses import node_address
from dhtmesh.node.records.farmer import HEIGHT_LIMIT, decode_farmer
from dhtmesh.node.records.farmer_events import (
    MAX_PING,
    ONLINE_TIME,
    HeightOverLimit,
    is_online,
    pinged,
    registered,
    uptime_percent,
    with_bandwidth,
    with_height,
)

T0 = 1_700_000_000  # in the past: a record seen in the future is refused


def new_farmer(now: int = T0):
    farmer = Identity.generate()
    return registered(farmer.node_id, node_address(farmer.node_id), now, "127.0.0.1")


def test_a_new_farmer_is_online_with_full_uptime() -> None:
    record = new_farmer()
    assert (record.last_seen, record.height, record.uptime) == (T0, 0, 0)
    assert is_online(record, T0) and uptime_percent(record, T0) == 100.0


def test_a_ping_within_a_minute_is_accepted_without_effect() -> None:
    record = new_farmer()
    assert pinged(record, T0 + MAX_PING - 1) == record
    later = pinged(record, T0 + MAX_PING)
    assert (later.last_seen, later.uptime) == (T0 + MAX_PING, MAX_PING)


def test_a_long_silence_counts_only_the_online_window_as_uptime() -> None:
    record = pinged(new_farmer(), T0 + 3600)
    assert record.uptime == ONLINE_TIME
    assert uptime_percent(record, T0 + 3600) == round(100 * ONLINE_TIME / 3600, 3)
    assert not is_online(record, T0 + 3600 + ONLINE_TIME + 1)
    assert is_online(record, T0 + 3600 + ONLINE_TIME)


def test_height_and_bandwidth_reports_count_as_being_seen() -> None:
    record = with_height(new_farmer(), 25, T0 + 10, "127.0.0.2")
    assert (record.height, record.last_seen, record.ip) == (25, T0 + 10, "127.0.0.2")
    record = with_bandwidth(record, 100, 200, T0 + 200)
    assert (record.bandwidth_upload, record.bandwidth_download, record.last_seen) == (100, 200, T0 + 200)
    assert with_height(record, HEIGHT_LIMIT, T0 + 300).height == HEIGHT_LIMIT
    with pytest.raises(HeightOverLimit):
        with_height(record, HEIGHT_LIMIT + 1, T0 + 300)


def test_a_farmer_reporting_every_few_seconds_keeps_full_uptime() -> None:
    record = new_farmer()
    for second in range(5, 200, 5):
        record = with_height(record, second, T0 + second)
        assert uptime_percent(record, T0 + second) == 100.0


@given(st.lists(st.tuples(st.sampled_from(["ping", "height", "bandwidth"]), st.integers(-120, 4000)), max_size=30))
def test_any_sequence_of_reports_keeps_a_record_every_node_accepts(events: list[tuple[str, int]]) -> None:
    record, now = new_farmer(), T0
    for kind, step in events:
        now += step  # clocks may also step back a little
        if kind == "ping":
            record = pinged(record, now)
        elif kind == "height":
            record = with_height(record, abs(step) % HEIGHT_LIMIT, now)
        else:
            record = with_bandwidth(record, abs(step), abs(step) * 2, now)
        assert decode_farmer(record.encode()) == record  # the record rule holds after every event
        assert 0.0 <= uptime_percent(record, max(now, record.last_seen)) <= 100.0
