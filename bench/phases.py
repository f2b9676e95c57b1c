"""Where a job's overhead goes: sequential no-op jobs (the emulated backend, 0 s), each split by
the timestamps the job hash records (Redis's own clock, microseconds) and the client's:

- ``api``: the client sends the submit → the create step ran (HTTP, auth, validation, Lua);
- ``to_start``: created → started (the wake-up token, the worker's pick and start steps);
- ``generate``: the pipeline call (``generation_seconds``; ~0 for the no-op backend);
- ``store``: started → completed minus generation (encode, S3 PUT, the terminal write);
- ``webhook``: completed → the terminal webhook arrived at a local receiver (the deliverer's
  wake-up, claim, render, sign, POST);
- ``total``: the client's send → the webhook's arrival.
Medians over ``jobs`` (after a warm-up).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.harness import Receiver, post_json, stack


def run(jobs: int = 60) -> dict[str, Any]:
    with stack() as s:
        api = s.start_api()
        s.start_webhooks()
        s.start_workers(1, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0")
        receiver = Receiver()
        http = s.http(maxsize=4)
        r = s.client()
        body = {"prompt": "noop", "num_inference_steps": 1, "webhook": receiver.url}
        body["webhook_events_filter"] = ["succeeded", "failed", "canceled"]
        phases: dict[str, list[float]] = {}
        try:
            for i in range(10 + jobs):
                offset = time.time() - time.perf_counter()  # the receiver stamps perf_counter
                sent = time.time()
                job = post_json(http, api + "/v1/jobs", body)
                arrived = receiver.wait_terminal(job["id"]) + offset
                raw = {k.decode(): v.decode() for k, v in r.hgetall(f"dq:job:{job['id']}").items()}
                if i < 10:
                    continue
                created, started, completed = (float(raw[k]) for k in ("created_at", "started_at", "completed_at"))
                generate = float(raw.get("generation_seconds") or 0)
                split = {
                    "api": created - sent,
                    "to_start": started - created,
                    "generate": generate,
                    "store": completed - started - generate,
                    "webhook": arrived - completed,
                    "total": arrived - sent,
                }
                for name, seconds in split.items():
                    phases.setdefault(name, []).append(seconds * 1000)
        finally:
            receiver.close()
    return {"jobs": jobs, "median_ms": {k: round(statistics.median(v), 2) for k, v in phases.items()}}
