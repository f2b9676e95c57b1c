"""Scenario 1 — overhead: sequential tiny jobs (64×64, 4 steps); end-to-end as a client sees
it (by webhook arrival, and by polling) minus the worker's pipeline time for that job."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import Receiver, get_json, post_json, stack, summary_ms

BODY = {"prompt": "a pig with wings", "num_inference_steps": 4, "width": 64, "height": 64}


def raw_pipeline(calls: int = 30) -> dict[str, float]:
    from bench.harness import ROOT
    from worker.pipelines.base import GenerationRequest
    from worker.pipelines.diffusers_backend import DiffusersBackend

    backend = DiffusersBackend(ROOT / "compiled" / "tiny-sd", torch_threads=1)
    request = GenerationRequest("a pig with wings", None, 4, 7.5, 1, 64, 64, 1)
    for _ in range(3):
        backend.generate(request, lambda step: None)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        backend.generate(request, lambda step: None)
        times.append(time.perf_counter() - started)
    return summary_ms(times)


def run(jobs: int = 60, poll_interval_s: float = 0.002) -> dict[str, Any]:
    result: dict[str, Any] = {"raw_pipeline": raw_pipeline()}
    with stack() as s:
        api = s.start_api()
        s.start_webhooks()
        s.start_workers(1, DQ_TORCH_THREADS="1")
        receiver = Receiver()
        http = s.http(maxsize=4)
        try:
            for _ in range(5):  # warm-up: connection pools, S3 volumes
                job = post_json(http, api + "/v1/jobs", {**BODY, "webhook": receiver.url})
                receiver.wait_terminal(job["id"])
            by_webhook, by_polling = [], []
            for i in range(jobs):
                started = time.perf_counter()
                job = post_json(http, api + "/v1/jobs", {**BODY, "seed": i, "webhook": receiver.url})
                arrived = receiver.wait_terminal(job["id"])
                final = get_json(http, f"{api}/v1/jobs/{job['id']}")
                by_webhook.append(arrived - started - final["metrics"]["generation_seconds"])
            for i in range(jobs):
                started = time.perf_counter()
                job = post_json(http, api + "/v1/jobs", {**BODY, "seed": i})
                while True:
                    final = get_json(http, f"{api}/v1/jobs/{job['id']}")
                    if final["status"] == "succeeded":
                        break
                    time.sleep(poll_interval_s)
                by_polling.append(time.perf_counter() - started - final["metrics"]["generation_seconds"])
        finally:
            receiver.close()
    result["overhead_by_webhook"] = summary_ms(by_webhook)
    result["overhead_by_polling"] = summary_ms(by_polling)
    result["poll_interval_ms"] = poll_interval_s * 1000
    return result
