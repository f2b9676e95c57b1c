"""Scenario — what identity and limits cost per request, in microseconds, on a real Redis:

- resolving a key: a cached lookup (what nearly every request pays), and an uncached one
  (one HGETALL, the SHA-256 and a constant-time compare: once per key and process per 0.8 s);
- the create step with every check on (backpressure, max_active_jobs, token bucket) against
  the same step with all limits off — the checks run inside the one Lua script, so their cost
  is Redis time, not a round trip.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

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


def run(n: int = 2000) -> dict[str, Any]:
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
