"""``make bench``: run the scenarios, print a table, save JSON under bench/results/.

python -m bench.run                      # all scenarios (a few minutes)
python -m bench.run overhead duty_cycle  # some
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

from bench.harness import ROOT, machine

SCENARIOS = [  # and peers, waiters (run by name)
    "overhead",
    "duty_cycle",
    "api_capacity",
    "auth_cost",
    "scheduling",
    "fleet",
    "throughput",
    "cold_start",
    "eta",
    "load_step",
]


def main(argv: list[str]) -> int:
    chosen = argv or SCENARIOS
    results: dict[str, Any] = {
        "machine": machine(),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(argv),
    }
    for name in chosen:
        started = time.monotonic()
        print(f"== {name} …", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        results[name] = module.run()
        results[name]["bench_seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(results[name], indent=2), flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
