"""``make bench``: run the scenarios, print a table, save JSON under bench/results/.

python -m bench.run                      # all scenarios (a few minutes)
python -m bench.run overhead duty_cycle  # some
python -m bench.run --keep peers         # also keep the raw JSON in docs/bench-results/ (quoted runs)

Every result file names the host's CPU model, the commit (and whether the tree had changes)
and the command.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from bench.harness import ROOT, machine

# `make bench` runs these; peers, waiters (and others) run by name
SCENARIOS = [
    "overhead",
    "phases",
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


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(argv: list[str]) -> int:
    keep = "--keep" in argv
    chosen = [a for a in argv if a != "--keep"] or SCENARIOS
    results: dict[str, Any] = {
        "machine": machine(),
        "commit": commit(),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(argv),
    }
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    label = "-".join(chosen) if len(chosen) <= 3 else "all"
    paths = [ROOT / "bench" / "results"] + ([ROOT / "docs" / "bench-results"] if keep else [])
    for name in chosen:
        started = time.monotonic()
        print(f"== {name} …", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            results[name] = module.run()
        except Exception as exc:  # recorded; the scenarios after it still run
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "valid": False}
        results[name]["bench_seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(results[name], indent=2), flush=True)
        for out in paths:  # saved after every scenario: a crash later loses nothing
            out.mkdir(exist_ok=True)
            (out / f"{stamp}-{label}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {stamp}-{label}.json in {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
