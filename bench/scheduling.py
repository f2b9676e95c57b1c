"""Scenario — the scheduler on real processes (emulated workers, so the host's CPU is not the
bottleneck):

- **fairness**: tenant "bulk" submits 1,000 jobs (batch submit), then tenant "small" submits 5;
  how many bulk jobs start between small's submit and its first start (the target: at most one
  per worker), and how long small waits for all five against the bulk backlog's drain time;
- **priority**: one ``high`` job submitted behind the same backlog: how long until it starts;
- **batching**: 200 jobs on a model compiled for a static batch of 4 prompts, emulated with a
  batch of 4 costing 2.4 × one job (``DQ_EMULATED_BATCH_COST=0.4667``), against the same jobs
  on the same model compiled for 1 prompt: completed jobs/s;
- **batch submit**: jobs accepted per second through ``POST /v1/jobs/batch`` (100 per request,
  wrk, 32 connections; no worker running).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.api_capacity import measure
from bench.harness import ROOT, Stack, get_json, stack

JOB_S = 0.2  # emulated seconds per job


def seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def post(s: Stack, path: str, body: Any, key: str | None = None) -> Any:
    http = s.http()
    headers = {**http.headers, "Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    reply = http.request("POST", s.api_url + path, body=json.dumps(body).encode(), headers=headers)
    return json.loads(reply.data)


def tenant_key(s: Stack, tenant: str) -> str:
    from jobs.tenants import KeyStore

    _, key = KeyStore(s.client()).create(
        tenant, rate_limit_per_s=1e6, rate_limit_burst=10**6, max_active_jobs=10**6, max_priority="high"
    )
    return key


def fairness(s: Stack, workers: int) -> dict[str, Any]:
    bulk, small = tenant_key(s, "bulk"), tenant_key(s, "small")
    body = {"prompt": "bulk", "num_inference_steps": 4}
    for _ in range(10):
        post(s, "/v1/jobs/batch", {"jobs": [body] * 100}, bulk)
    time.sleep(2 * JOB_S)
    submitted = time.time()
    mine = [post(s, "/v1/jobs", {"prompt": "small", "num_inference_steps": 4}, small)["id"] for _ in range(5)]
    urgent = post(s, "/v1/jobs", {"prompt": "urgent", "num_inference_steps": 4, "priority": "high"}, bulk)["id"]
    http = s.http()
    finals = [wait_terminal(http, s.api_url, job_id) for job_id in [*mine, urgent]]
    first_start = min(seconds(j["started_at"]) for j in finals[:5])
    client = s.client()
    pipe = client.pipeline(transaction=False)
    for job_id in client.zrange("dq:jobs", 0, -1):
        pipe.hmget(f"dq:job:{job_id.decode()}", "tenant", "started_at")
    bulk_started = [float(t) for tenant, t in pipe.execute() if tenant == b"bulk" and t]
    between = sum(1 for t in bulk_started if submitted < t < first_start)
    return {
        "workers": workers,
        "bulk_jobs": 1000,
        "bulk_started_between_small_submit_and_its_first_start": between,
        "small_first_start_s": round(first_start - submitted, 3),
        "small_all_done_s": round(max(seconds(j["completed_at"]) for j in finals[:5]) - submitted, 3),
        "high_priority_start_s": round(seconds(finals[5]["started_at"]) - submitted, 3),
        "bulk_drain_estimate_s": round(1000 * JOB_S / workers, 1),
    }


def wait_terminal(http: Any, api: str, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = get_json(http, f"{api}/v1/jobs/{job_id}")
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job_id)


def throughput(s: Stack, model: str, jobs: int) -> float:
    body = {"prompt": "batch", "num_inference_steps": 4, "model": model}
    client = s.client()
    client.delete("dq:jobs:succeeded")
    for _ in range(jobs // 100):
        post(s, "/v1/jobs/batch", {"jobs": [body] * 100})
    started = time.monotonic()
    while client.zcard("dq:jobs:succeeded") < jobs:
        time.sleep(0.05)
    return round(jobs / (time.monotonic() - started), 2)


def run(workers: int = 2) -> dict[str, Any]:
    from worker.pipelines.tiny import StaticShape, declare_static_shape

    result: dict[str, Any] = {}
    emulated = {"DQ_BACKEND": "emulated", "DQ_EMULATED_SECONDS": str(JOB_S), "DQ_EMULATED_BATCH_COST": "0.4667"}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        shutil.copytree(ROOT / "compiled" / "tiny-sd", models / "tiny-sd")
        for name, batch in (("static-1", 1), ("static-4", 4)):
            shutil.copytree(ROOT / "compiled" / "tiny-sd", models / name)
            declare_static_shape(models / name, StaticShape(64, 64, batch, 1))
        with stack(models_dir=models) as s:
            s.start_api()
            auth = f'wrk.headers["Authorization"] = "Bearer {s.api_key}"\n'
            script = (
                'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = '{json.dumps({'jobs': [{'prompt': 'a pig', 'num_inference_steps': 4}] * 100})}'\n"
            )
            submits = measure(s.api_url + "/v1/jobs/batch", 5, 32, script + auth)
            result["batch_submit"] = {**submits, "jobs_per_s_min": submits["rps_min"] * 100}
            s.client().flushdb()
            from jobs.tenants import KeyStore

            _, s.api_key = KeyStore(s.client()).create(
                "bench", admin=True, rate_limit_per_s=1e6, rate_limit_burst=10**6
            )
            s.start_workers(workers, **emulated)
            result["fairness"] = fairness(s, workers)
            s.stop_workers()
            for name in ("static-1", "static-4"):
                s.start_workers(1, model=name, **emulated)
                result[f"throughput_{name}_jobs_per_s"] = throughput(s, name, 200)
                s.stop_workers()
    result["batching_gain"] = round(
        result["throughput_static-4_jobs_per_s"] / result["throughput_static-1_jobs_per_s"], 2
    )
    result["batching_ideal_gain"] = round(4 / 2.4, 2)
    return result
