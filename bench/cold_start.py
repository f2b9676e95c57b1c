"""Scenario 6 — cold start and memory: worker process start → ready (model loaded and warmed)
against a bare process that only loads the model and runs the same warm-up call, both timed
from the spawn to that point (no interpreter shutdown in either); jobs submitted before the
worker starts are taken only after ready. Memory: the worker's RSS after its jobs minus the
bare process's RSS with the pipeline loaded and warmed = what the worker adds (Celery, Redis,
boto3, threads)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import ROOT, get_json, post_json, stack

BARE = """
import sys, time
spawned = float(sys.argv[1])
from worker.pipelines.base import GenerationRequest
from worker.pipelines.diffusers_backend import DiffusersBackend
backend = DiffusersBackend({path!r}, torch_threads=1)
loaded = time.time() - spawned
backend.generate(GenerationRequest("warm-up", None, 4, 7.5, 0, 64, 64, 1), lambda step: None)
warmed = time.time() - spawned
rss_kb = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS"))
print(loaded, warmed, rss_kb)
"""


def bare_load() -> tuple[float, float, float]:
    """A fresh interpreter that imports torch + diffusers, loads the model and runs one warm-up
    call, nothing else: (seconds to loaded, seconds to warmed, RSS MB), timed from the spawn."""
    code = BARE.format(path=str(ROOT / "compiled" / "tiny-sd"))
    out = subprocess.run(
        [sys.executable, "-c", code, repr(time.time())], check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]) / 1024


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


def run(jobs: int = 5) -> dict[str, Any]:
    bares = [bare_load() for _ in range(3)]
    loaded, warmed, bare_rss = min(b[0] for b in bares), min(b[1] for b in bares), min(b[2] for b in bares)
    with stack() as s:
        api = s.start_api()
        http = s.http()
        ids = [
            post_json(http, api + "/v1/jobs", {"prompt": "early", "num_inference_steps": 4})["id"] for _ in range(jobs)
        ]
        spawned = time.time()
        (worker,) = s.start_workers(1, DQ_TORCH_THREADS="1")
        from jobs.workers import WorkerRegistry

        (info,) = WorkerRegistry(s.client()).live()
        while True:
            finals = [get_json(http, f"{api}/v1/jobs/{i}") for i in ids]
            if all(j["status"] == "succeeded" for j in finals):
                break
            time.sleep(0.2)
        worker_rss = rss_mb(worker.pid)
    first_start = min(datetime.fromisoformat(j["started_at"].replace("Z", "+00:00")).timestamp() for j in finals)
    assert info.ready_at is not None
    return {
        "bare_spawn_to_loaded_s": round(loaded, 3),
        "bare_spawn_to_warmed_s": round(warmed, 3),
        "worker_spawn_to_ready_s": round(info.ready_at - spawned, 3),
        "ready_minus_bare_warmed_s": round(info.ready_at - spawned - warmed, 3),
        "bare_rss_mb": round(bare_rss, 1),
        "worker_rss_mb": round(worker_rss, 1),
        "worker_rss_beyond_pipeline_mb": round(worker_rss - bare_rss, 1),
        "first_job_started_after_ready_s": round(first_start - info.ready_at, 4),
        "no_job_before_ready": first_start >= info.ready_at,
    }
