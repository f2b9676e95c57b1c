"""The scaling signal under a load step (issue 12, part 2): does ``dq_backlog_per_ready_worker``
track it, and does target tracking on it bring the backlog back?

An emulated fleet (``DQ_BACKEND=emulated``, ``job_s`` per job) serves one model. Jobs arrive
open-loop at ``low_per_s`` (under the fleet's capacity), then step to ``high_per_s`` (over
it). Every second the bench scrapes ``GET /metrics`` as Prometheus would, and every
``eval_s`` an emulated autoscaler applies target tracking to the scraped signal — desired =
ceil(serving × signal / target), up only, at most ``max_workers`` — by starting more emulated
workers (as an Auto Scaling group or KEDA would start pods; here they are ready in seconds).
Reported: the series, and where the signal stood before the step, its peak, how long after the
step it crossed the target, and where it ended.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.harness import post_json, stack

MODEL = "tiny-sd"


def scrape(http: Any, api: str) -> dict[str, float]:
    text = http.request("GET", api + "/metrics").data.decode()
    found = {"backlog_per_ready_worker": 0.0, "queue_depth": 0.0, "serving": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != MODEL:
                continue
            if s.name == "dq_backlog_per_ready_worker":
                found["backlog_per_ready_worker"] = s.value
            elif s.name == "dq_queue_depth":
                found["queue_depth"] = s.value
            elif s.name == "dq_workers" and s.labels["state"] in ("ready", "busy"):
                found["serving"] += s.value
    return found


def run(
    workers: int = 2,
    max_workers: int = 6,
    job_s: float = 0.5,
    low_per_s: float = 2.0,
    high_per_s: float = 8.0,
    low_s: float = 10.0,
    high_s: float = 25.0,
    target: float = 2.0,
    eval_s: float = 3.0,
) -> dict[str, Any]:
    with stack(DQ_HEARTBEAT_S="1") as s:
        api = s.start_api()
        worker_env = {"DQ_BACKEND": "emulated", "DQ_EMULATED_SECONDS": str(job_s), "DQ_WARMUP": "false"}
        started = [_start_worker(s, i, worker_env) for i in range(workers)]
        s.wait_workers(workers)
        http = s.http(maxsize=8)
        body = {"prompt": "step", "num_inference_steps": 5}
        stop = threading.Event()
        t0 = time.monotonic()
        step_at = t0 + low_s

        def arrivals() -> None:  # open loop: submit on a schedule, whatever the backlog
            sent = 0
            while not stop.is_set():
                now = time.monotonic()
                due = low_per_s * min(now - t0, low_s) + high_per_s * max(0.0, now - step_at)
                while sent < int(due):
                    post_json(http, api + "/v1/jobs", body)
                    sent += 1
                time.sleep(0.01)

        thread = threading.Thread(target=arrivals, daemon=True)
        thread.start()
        series: list[dict[str, float]] = []
        next_eval = t0 + eval_s
        while time.monotonic() - t0 < low_s + high_s:
            point = scrape(http, api)
            point["t"] = round(time.monotonic() - step_at, 1)  # seconds since the step (< 0: before)
            point["workers_started"] = len(started)
            series.append(point)
            if time.monotonic() >= next_eval:  # target tracking, scale-out only
                next_eval += eval_s
                desired = math.ceil(max(point["serving"], 1) * point["backlog_per_ready_worker"] / target)
                while len(started) < min(desired, max_workers):
                    started.append(_start_worker(s, len(started), worker_env))
            time.sleep(1.0)
        stop.set()
        thread.join()
    return _summary(series, target, workers, max_workers, job_s, low_per_s, high_per_s)


def _start_worker(s: Any, index: int, env: dict[str, str]) -> Any:
    cmd = [sys.executable, "-m", "dq", "worker-process", "--model", MODEL]
    return s.spawn(f"step-worker{index}", cmd, DQ_WORKER_NAME=f"step{index}@{MODEL}", **env)


def _summary(
    series: list[dict[str, float]],
    target: float,
    workers: int,
    max_workers: int,
    job_s: float,
    low_per_s: float,
    high_per_s: float,
) -> dict[str, Any]:
    before = [p["backlog_per_ready_worker"] for p in series if p["t"] < 0]
    after = [p for p in series if p["t"] >= 0]
    crossed = next((p["t"] for p in after if p["backlog_per_ready_worker"] > target), None)
    peak = max(after, key=lambda p: p["backlog_per_ready_worker"]) if after else None
    return {
        "job_seconds": job_s,
        "arrivals_per_s": {"before": low_per_s, "after": high_per_s},
        "capacity_per_s": {"before": workers / job_s, "at_max": max_workers / job_s},
        "target_backlog_per_worker": target,
        "signal_before_step_max": round(max(before), 2) if before else None,
        "signal_crossed_target_after_s": crossed,
        "signal_peak": round(peak["backlog_per_ready_worker"], 2) if peak else None,
        "signal_peak_at_s": peak["t"] if peak else None,
        "serving_at_end": series[-1]["serving"] if series else None,
        "signal_at_end": round(series[-1]["backlog_per_ready_worker"], 2) if series else None,
        "series": [
            {k: p[k] for k in ("t", "queue_depth", "serving", "backlog_per_ready_worker", "workers_started")}
            for p in series
        ],
    }
