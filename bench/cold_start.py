"""Scenario 6 — cold start: worker process start → ready (model loaded and warmed) against the
bare model load time; jobs submitted before the worker starts are taken only after ready."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from typing import Any

from bench.harness import ROOT, get_json, post_json, stack

LOAD = "from worker.pipelines.diffusers_backend import DiffusersBackend;DiffusersBackend({path!r}, torch_threads=1)"


def bare_load_seconds() -> float:
    """A fresh interpreter that imports torch + diffusers and loads the model, nothing else."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", LOAD.format(path=str(ROOT / "compiled" / "tiny-sd"))], check=True, cwd=ROOT)
    return time.perf_counter() - started


def run(jobs: int = 5) -> dict[str, Any]:
    bare = min(bare_load_seconds() for _ in range(3))
    with stack() as s:
        api = s.start_api()
        http = s.http()
        ids = [
            post_json(http, api + "/v1/jobs", {"prompt": "early", "num_inference_steps": 4})["id"] for _ in range(jobs)
        ]
        spawned = time.time()
        s.start_workers(1, DQ_TORCH_THREADS="1")
        from jobs.workers import WorkerRegistry

        (info,) = WorkerRegistry(s.client()).live()
        while True:
            finals = [get_json(http, f"{api}/v1/jobs/{i}") for i in ids]
            if all(j["status"] == "succeeded" for j in finals):
                break
            time.sleep(0.2)
    first_start = min(datetime.fromisoformat(j["started_at"].replace("Z", "+00:00")).timestamp() for j in finals)
    assert info.ready_at is not None
    return {
        "bare_model_load_s": round(bare, 3),
        "process_start_to_ready_s": round(info.ready_at - spawned, 3),
        "ready_minus_bare_load_s": round(info.ready_at - spawned - bare, 3),
        "first_job_started_after_ready_s": round(first_start - info.ready_at, 4),
        "no_job_before_ready": first_start >= info.ready_at,
    }
