#!/usr/bin/env python3
"""Run the side-by-side benchmarks (proxy vs OpenDHT, DHT vs stock kademlia, cost, scale and churn, farmer
registry vs dataserv, jobs vs Dask, data streams vs Redis streams), each in its own process, and print one
table of figures and ratios, with the machine and date; write it all as JSON.

Each benchmark script prints, as its last line of output, a JSON document
`{"bench": name, "rows": [...], "ratios": [{"case", "metric", "dhtmesh", "anchor", "ratio"}]}`.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "proxy": (["bench_proxy.py"], ["--quick"]),
    "dht": (["bench_dht.py", "--multiproc"], ["--quick"]),
    "cost": (["bench_cost.py"], ["--quick"]),
    "scale": (["bench_scale.py"], ["--quick"]),
    "farmers": (["bench_farmers.py"], ["--quick"]),
    "jobs": (["bench_jobs.py"], ["--quick"]),
    "streams": (["bench_streams.py"], ["--quick"]),
}


def run_bench(name: str, quick: bool) -> dict:
    script, quick_args = BENCHES[name]
    command = [sys.executable, str(HERE / script[0]), *script[1:], *(quick_args if quick else [])]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    print("\n".join(line for line in completed.stdout.splitlines() if not line.startswith("{")), flush=True)
    if completed.returncode != 0 or not lines:
        sys.stderr.write(completed.stderr[-4000:])
        return {"bench": name, "error": f"exit {completed.returncode}", "rows": [], "ratios": []}
    return json.loads(lines[-1])


def machine() -> dict:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def print_ratios(results: list[dict]) -> None:
    print("\n== ratios (dhtmesh / anchor)")
    print(f"{'bench':<6} {'case':<34} {'metric':<16} {'dhtmesh':>12} {'anchor':>12} {'ratio':>8}")
    for result in results:
        for ratio in result.get("ratios", []):
            print(
                f"{result['bench']:<6} {ratio['case']:<34} {ratio['metric']:<16} "
                f"{_number(ratio.get('dhtmesh'))} {_number(ratio.get('anchor'))} {_number(ratio.get('ratio'), 8)}"
            )


def _number(value: object, width: int = 12) -> str:
    if isinstance(value, int | float):
        return f"{value:>{width}.3g}"
    return f"{'-':>{width}}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these")
    parser.add_argument("--out", default="bench-results.json", help="where to write the JSON")
    args = parser.parse_args()
    results = [run_bench(name, args.quick) for name in (args.only or list(BENCHES))]
    report = {"machine": machine(), "command": " ".join(["scripts/bench", *sys.argv[1:]]), "results": results}
    print(f"\nmachine: {report['machine']}")
    print_ratios(results)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.out}")
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
