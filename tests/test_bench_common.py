"""scripts/bench_common.py: the one percentile definition every benchmark table uses, and the benchmarks
watching nodes through the node's observation hooks rather than by patching its private parts."""

import re
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.append(str(SCRIPTS))

from bench_common import percentile  # noqa: E402  (scripts/ is not a package)


def test_percentiles_are_nearest_rank_so_each_is_a_latency_some_operation_had() -> None:
    hundred = [float(n) for n in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(hundred, 50) == 50.0
    assert percentile(hundred, 99) == 99.0
    assert percentile(hundred, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 99) is None


def test_no_benchmark_defines_its_own_percentile_or_patches_a_node() -> None:
    # (stock kademlia, the other system measured, has no hooks: its crawler is still counted by wrapping)
    patched = re.compile(r"node\.(counters\.add|endpoint\.call|_find|replicator\.hand_off)\s*=|\.store\._db\b")
    for script in SCRIPTS.glob("bench_*.py"):
        text = script.read_text()
        if script.name != "bench_common.py":
            assert "def percentile" not in text, script.name
        assert not patched.search(text), script.name
