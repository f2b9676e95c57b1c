"""Scenario 2 — accelerator duty cycle: a backlog on ONE worker; pipeline-busy time ÷ wall time
(first claim → last job stored). Tiny model, and an emulated inf2 core (2.0 s, 512×512)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Stack, get_json, post_json, stack


def backlog_duty(s: Stack, body: dict[str, Any], jobs: int, timeout_s: float) -> dict[str, Any]:
    """Submit the whole backlog, wait (watching Redis, not loading the API), then read the jobs."""
    api, client, http = s.api_url, s.client(), s.http(maxsize=4)
    client.delete("dq:jobs:succeeded", "dq:jobs:failed")
    ids = [post_json(http, api + "/v1/jobs", {**body, "seed": i})["id"] for i in range(jobs)]
    deadline = time.monotonic() + timeout_s
    while client.zcard("dq:jobs:succeeded") + client.zcard("dq:jobs:failed") < jobs:
        if time.monotonic() > deadline:
            raise TimeoutError("backlog unfinished")
        time.sleep(0.5)
    return duty_from([get_json(http, f"{api}/v1/jobs/{job_id}") for job_id in ids])


def duty_from(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    from datetime import datetime

    def ts(value: str) -> float:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    busy = sum(j["metrics"]["generation_seconds"] for j in jobs)
    first = min(ts(j["started_at"]) for j in jobs)
    last = max(ts(j["completed_at"]) for j in jobs)
    failed = sum(1 for j in jobs if j["status"] != "succeeded")
    return {
        "jobs": len(jobs),
        "failed": failed,
        "busy_s": round(busy, 3),
        "wall_s": round(last - first, 3),
        "duty_cycle": round(busy / (last - first), 4),
    }


def run(tiny_jobs: int = 200, emulated_jobs: int = 30) -> dict[str, Any]:
    from worker.pipelines.tiny import StaticShape, declare_static_shape

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        shutil.copytree(ROOT / "compiled" / "tiny-sd", models / "tiny-sd")
        shutil.copytree(ROOT / "compiled" / "tiny-sd", models / "emu-512")
        declare_static_shape(models / "emu-512", StaticShape(512, 512))
        with stack(models_dir=models) as s:
            s.start_api()
            s.start_workers(1, DQ_TORCH_THREADS="1")
            body = {"prompt": "a pig with wings", "num_inference_steps": 4}
            result["tiny"] = backlog_duty(s, body, tiny_jobs, 600)
            s.stop_workers()
            s.start_workers(1, model="emu-512", DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="2.0")
            body = {"prompt": "a pig with wings", "num_inference_steps": 25, "model": "emu-512"}
            result["emulated_inf2"] = backlog_duty(s, body, emulated_jobs, 600)
    return result
