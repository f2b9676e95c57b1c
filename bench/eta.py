"""ETA accuracy (issue 12, part 3): on a steady backlog of emulated jobs, how close is the
``eta_seconds`` a job is given when it is submitted to how long it really took to finish?

Emulated workers (``DQ_BACKEND=emulated``: each job holds its worker ``job_s``) serve one model;
two tenants keep a backlog of about ``backlog_per_worker`` × workers (the scheduler interleaves
them: fair share), after a warm-up that gives the model its moving average. Each job submitted
in the window records its ETA; once all have finished, the actual time is ``completed_at -
created_at``. Reported: the median (and p90) absolute relative error |actual − eta| / actual.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import datetime
from typing import Any

import redis

from bench.harness import get_json, pct, post_json, stack
from jobs.tenants import KeyStore


def run(workers: int = 4, job_s: float = 0.4, backlog_per_worker: int = 3, window_s: float = 20.0) -> dict[str, Any]:
    with stack(DQ_HEARTBEAT_S="1") as s:
        api = s.start_api()
        s.start_workers(workers, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS=str(job_s))
        client = s.client()
        _, other_key = KeyStore(client).create("bench-b", label="bench", rate_limit_per_s=1e6, rate_limit_burst=10**6)
        tenants = [s.http(maxsize=4), s.http(maxsize=4)]
        tenants[1].headers["Authorization"] = f"Bearer {other_key}"
        body = {"prompt": "eta", "num_inference_steps": 4}
        sampled: list[tuple[str, float]] = []  # (job id, eta given at submit)
        sampling = threading.Event()
        stop = threading.Event()

        def feeder() -> None:  # keep the backlog steady, alternating tenants
            n = 0
            while not stop.is_set():
                if _depth(client) < backlog_per_worker * workers:
                    job = post_json(tenants[n % 2], api + "/v1/jobs", body)
                    n += 1
                    if sampling.is_set() and job.get("eta_seconds") is not None:
                        sampled.append((job["id"], float(job["eta_seconds"])))
                else:
                    time.sleep(0.01)

        thread = threading.Thread(target=feeder, daemon=True)
        thread.start()
        time.sleep(5)  # steady state, and the model's moving average measured
        sampling.set()
        time.sleep(window_s)
        sampling.clear()
        stop.set()
        thread.join()
        http = s.http()
        errors, actuals, signed = [], [], []
        for job_id, eta in sampled:
            job = _wait_done(http, f"{api}/v1/jobs/{job_id}")
            actual = _seconds(job["completed_at"]) - _seconds(job["created_at"])
            actuals.append(actual)
            errors.append(abs(actual - eta) / actual)
            signed.append((eta - actual) / actual)
    return {
        "workers": workers,
        "job_seconds": job_s,
        "backlog": backlog_per_worker * workers,
        "tenants": 2,
        "jobs_sampled": len(errors),
        "actual_seconds_median": round(statistics.median(actuals), 3) if actuals else None,
        "eta_abs_rel_error_median": round(statistics.median(errors), 4) if errors else None,
        "eta_abs_rel_error_p90": round(pct(errors, 0.9), 4) if errors else None,
        "eta_rel_bias_median": round(statistics.median(signed), 4) if signed else None,  # < 0: too early
        "target": 0.20,
    }


def _depth(client: redis.Redis) -> int:
    return int(client.zcard("dq:pending:tiny-sd"))


def _wait_done(http: Any, url: str) -> dict[str, Any]:
    while True:
        job = get_json(http, url)
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.05)


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
