"""Scenario — what identity and limits cost per request, in microseconds, on a real Redis:

- resolving a key: a cached lookup (what nearly every request pays), and an uncached one
  (one HGETALL, the SHA-256 and a constant-time compare: once per key and process per 0.8 s);
- the create step with every check on (backpressure, max_active_jobs, token bucket) against
  the same step with all limits off — the checks run inside the one Lua script, so their cost
  is Redis time, not a round trip;
- end to end, in the same run: two APIs on one stack, one with ``DQ_AUTH=off`` (no key, no
  limits), one with auth and a limited key; submits/s (wrk, 3 runs each, alternating) and the
  overhead p50 of sequential no-op jobs to their terminal webhook (alternating, 3 × 30 jobs).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import urllib3

from dq.redis_server import start_redis
from jobs.store import Backpressure, JobStore, Limits, Owner
from jobs.submit import new_job_id
from jobs.tenants import KeyCache, KeyStore

INPUT = {"prompt": "a pig with wings", "num_inference_steps": 4, "seed": 1, "width": 64, "height": 64}


def per_call_us(call: Callable[[], Any], n: int) -> float:
    """Median of 5 batches of ``n`` calls, in µs per call."""
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            call()
        batches.append((time.perf_counter() - started) / n * 1e6)
    return round(statistics.median(batches), 1)


def end_to_end(rounds: int = 3, jobs: int = 30) -> dict[str, Any]:
    from bench.api_capacity import SUBMIT_LUA, wrk
    from bench.harness import Receiver, post_json, stack

    with stack() as s:
        apis = {"auth_off": s.start_api(DQ_AUTH="off"), "auth_on": s.start_api()}
        s.start_webhooks()
        s.start_workers(1, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0")
        _, limited = KeyStore(s.client()).create(
            "bench-limited", rate_limit_per_s=1e6, rate_limit_burst=10**6, max_active_jobs=10**9
        )
        auth = {"auth_off": "", "auth_on": f'wrk.headers["Authorization"] = "Bearer {limited}"\n'}
        receiver = Receiver()
        body = {"prompt": "noop", "num_inference_steps": 1, "webhook": receiver.url}
        submits: dict[str, list[int]] = {name: [] for name in apis}
        overhead: dict[str, list[float]] = {name: [] for name in apis}
        try:
            for name, url in apis.items():  # warm-up
                wrk(url + "/v1/jobs", 2, 32, SUBMIT_LUA + auth[name])
            for _ in range(rounds):
                for name, url in apis.items():
                    run_ = wrk(url + "/v1/jobs", 5, 32, SUBMIT_LUA + auth[name])
                    submits[name].append(run_["rps"] if run_["non_2xx"] == 0 and run_["socket_errors"] == 0 else 0)
            s.client().delete("dq:pending:tiny-sd")  # the flood's jobs: the worker need not run them
            for _ in range(rounds):
                for name, url in apis.items():
                    http = urllib3.PoolManager(headers={"Authorization": f"Bearer {limited}"} if auth[name] else {})
                    for _ in range(jobs):
                        started = time.perf_counter()
                        job = post_json(http, url + "/v1/jobs", body)
                        overhead[name].append((receiver.wait_terminal(job["id"]) - started) * 1000)
        finally:
            receiver.close()
    off, on = statistics.median(overhead["auth_off"]), statistics.median(overhead["auth_on"])
    return {
        "submits_per_s_runs": submits,
        "submits_per_s_min": {k: min(v) for k, v in submits.items()},
        "submit_ratio_on_vs_off": round(min(submits["auth_on"]) / max(min(submits["auth_off"]), 1), 3),
        "overhead_p50_ms": {"auth_off": round(off, 2), "auth_on": round(on, 2)},
        "overhead_ratio_on_vs_off": round(on / off, 3),
    }


def run(n: int = 2000) -> dict[str, Any]:
    return {**micro(n), "end_to_end": end_to_end()}


def micro(n: int = 2000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dq-bench-auth-") as tmp:
        service = start_redis(Path(tmp) / "redis", appendonly=False)
        try:
            client = redis.Redis.from_url(service.url)
            keys = KeyStore(client)
            _, key = keys.create("bench", admin=True)
            cache = KeyCache(keys)
            cache.lookup(key, time.time())
            limited = JobStore(client, backpressure=Backpressure(max_backlog=10**9, max_wait_s=3600, no_worker_s=0))
            unlimited = JobStore(client, backpressure=Backpressure())
            owner, on = Owner("bench", "k1"), Limits(rate_per_s=1e9, burst=10**9, max_active=10**9)
            # warm both paths (script load, allocator)
            for store, limits in ((limited, on), (unlimited, Limits())):
                store.create(new_job_id(), "m", INPUT, owner=owner, limits=limits)
            return {
                "key_lookup_cached_us": per_call_us(lambda: cache.lookup(key, time.time()), n),
                "key_lookup_redis_us": per_call_us(lambda: keys.lookup(key), n // 4),
                "create_limits_off_us": per_call_us(
                    lambda: unlimited.create(new_job_id(), "m", INPUT, owner=owner, limits=Limits()), n // 4
                ),
                "create_limits_on_us": per_call_us(
                    lambda: limited.create(new_job_id(), "m", INPUT, owner=owner, limits=on), n // 4
                ),
            }
        finally:
            service.stop()
