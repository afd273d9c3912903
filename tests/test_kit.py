"""The test kit's own parts (`dhtmesh.testing`) that a mistake would break for every test at once: the
split of the loopback addresses between pytest-xdist workers, and the reader of a node's `ready` line."""

import ipaddress
import subprocess
import sys

import pytest

from dhtmesh.node.wire import netgroup
from dhtmesh.testing import wait_ready
from dhtmesh.testing.addresses import INDEXES, worker_indexes


@pytest.mark.parametrize("workers", [1, 2, 4, 5, 8, 16, 64])
def test_every_worker_has_addresses_of_its_own_that_nodes_accept(workers: int) -> None:
    shares = [worker_indexes(f"gw{number}", workers) for number in range(workers)]
    taken = [index for share in shares for index in share]
    assert len(taken) == len(set(taken))  # no two workers share an index
    assert min(taken) == 1 and max(taken) <= INDEXES
    assert all(len(share) == INDEXES // workers for share in shares)
    for share in shares:  # the first and the last of each are addresses a node takes, each in a /24 of its own
        hosts = [netgroup.loopback_host(share[0]), netgroup.loopback_host(share[-1])]
        assert all(ipaddress.ip_address(host).is_loopback for host in hosts)


def test_outside_xdist_the_first_address_is_127_0_1_1() -> None:
    assert netgroup.loopback_host(worker_indexes("gw0", 1)[0]) == "127.0.1.1"


def test_a_worker_outside_the_count_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of 4 workers"):
        worker_indexes("gw4", 4)


@pytest.mark.process
def test_the_ready_line_is_found_when_it_arrives_with_others_and_what_follows_is_left() -> None:
    # Three lines in one write: the first `readline` takes them all into the text wrapper's buffer,
    # where a `select` on the pipe would not see the `ready` line (the child then stays silent).
    script = "import sys, time; sys.stdout.write('starting\\nready node_id=ab udp=h:1 proxy=u\\nafter\\n');"
    script += " sys.stdout.flush(); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert wait_ready(child, timeout=10) == {"node_id": "ab", "udp": "h:1", "proxy": "u"}
        assert child.stdout is not None and child.stdout.readline() == "after\n"
    finally:
        child.kill()
        child.wait(timeout=10)
        assert child.stdout is not None
        child.stdout.close()


@pytest.mark.process
def test_a_process_that_ends_without_a_ready_line_is_said_at_once() -> None:
    script = "import sys; print('no luck'); sys.stderr.write('bad config')"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with pytest.raises(AssertionError, match="bad config"):
        wait_ready(child, timeout=30)
    child.wait(timeout=10)
    for stream in (child.stdout, child.stderr):
        assert stream is not None
        stream.close()
