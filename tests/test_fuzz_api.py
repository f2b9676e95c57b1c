"""Fuzz the live API against its own OpenAPI document with schemathesis.

The API runs under gunicorn on a free port with a real Redis, SeaweedFS and a real worker
process (the emulated backend: jobs are claimed, run, stored in S3 and finished in a few
hundredths of a second, so the fuzzer sees every state without the CPU going to a model).
``schemathesis run`` then sends generated requests to every operation, valid and invalid (its
examples, coverage, fuzzing and stateful phases, a fixed seed and budget) and checks each
answer: no 5xx, and status, content type, headers and body as the document says. The fuzzer
authenticates with an admin key of its own, which it is kept from revoking
(``tests/fuzz_hooks.py``).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from jobs.tenants import KeyStore
from tests.conftest import REPO_ROOT, WorkerFactory, http_status

CONFIG = Path(__file__).with_name("schemathesis.toml")  # seed, budget, checks
MIN_REQUESTS = 1000
TIME_LIMIT_S = 240  # the run takes ~60 s on 2 cores; this only bounds a hang


def test_fuzz_the_live_api_against_its_document(
    live_api: str, start_worker: WorkerFactory, redis_client: redis.Redis, tmp_path: Path
) -> None:
    start_worker("tiny-sd", DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0.02")
    record, key = KeyStore(redis_client).create(
        "fuzz", label="schemathesis", admin=True, rate_limit_per_s=100_000, rate_limit_burst=100_000
    )
    calls = tmp_path / "calls.jsonl"
    started = time.monotonic()
    result = _run_schemathesis(live_api, key, record.prefix, calls, tmp_path)
    elapsed = time.monotonic() - started
    (tmp_path / "schemathesis.out").write_text(result.stdout + result.stderr)
    assert (tmp_path / "report.json").exists() and calls.exists(), result.stdout[-20000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    lines = [json.loads(line) for line in calls.read_text().splitlines()]
    print(_summary(lines, report, elapsed))
    assert result.returncode == 0, f"schemathesis found problems:\n{result.stdout[-20000:]}{result.stderr[-5000:]}"
    assert report["test_cases"]["generated"] >= MIN_REQUESTS and len(lines) >= MIN_REQUESTS, _summary(
        lines, report, elapsed
    )
    server_errors = [line for line in lines if line["status"] >= 500]
    assert not server_errors, server_errors[:20]
    assert {line["mode"] for line in lines} >= {"positive", "negative"}
    # every operation (schemathesis leaves out the one that serves the document it loaded)
    assert {line["operation"] for line in lines} == _operations(live_api) - {"GET /openapi.json"}
    assert http_status(f"{live_api}/v1/keys/{record.prefix}", key) == 200  # the fuzzer's own key survived


def _operations(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=5) as response:
        paths = json.load(response)["paths"]
    return {f"{method.upper()} {path}" for path, operations in paths.items() for method in operations}


def _run_schemathesis(url: str, key: str, prefix: str, calls: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "DQ_TEST_FUZZ_KEEP_PREFIX": prefix}
    env["DQ_TEST_FUZZ_CALLS"] = str(calls)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color", "run"]
    command += [f"{url}/openapi.json", "--url", url, "--header", f"Authorization: Bearer {key}"]
    command += ["--report", "json", "--report-json-path", str(out / "report.json")]
    return subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIME_LIMIT_S, check=False
    )


def _summary(lines: list[dict[str, Any]], report: dict[str, Any], elapsed_s: float) -> str:
    by_op: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in lines:
        by_op[line["operation"]][line["phase"]] += 1
    phases = sorted({line["phase"] for line in lines})
    rows = [f"{'operation':<58}" + "".join(f"{p:>10}" for p in phases) + f"{'all':>8}"]
    for op, counts in sorted(by_op.items()):
        rows.append(f"{op:<58}" + "".join(f"{counts[p]:>10}" for p in phases) + f"{sum(counts.values()):>8}")
    statuses = collections.Counter(line["status"] for line in lines)
    modes = collections.Counter(line["mode"] for line in lines)
    rows.append(
        f"{len(lines)} requests in {elapsed_s:.0f} s; modes {dict(modes)}; statuses {dict(sorted(statuses.items()))}"
    )
    rows.append(f"schemathesis: {report['test_cases']}; failures {report['failures']}")
    return "\n".join(rows)
