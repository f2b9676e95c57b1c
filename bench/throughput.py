"""Scenario 5 — system throughput with a no-op backend: submit → queue → worker → S3 → state →
webhook to a local receiver that each client waits on; 16 concurrent clients for 20 s, all on
this machine's cores."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.harness import Receiver, cpu_by_component, cpu_seconds, post_json, stack, summary_ms


def run(clients: int = 16, seconds: float = 20.0, workers: int = 4, api_workers: int = 2) -> dict[str, Any]:
    with stack() as s:
        api = s.start_api(workers=api_workers)
        s.start_webhooks()
        s.start_workers(workers, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0")
        receiver = Receiver()
        # Each client waits for its job's end: it subscribes to the terminal events only.
        terminal = ["succeeded", "failed", "canceled"]
        body = {"prompt": "noop", "num_inference_steps": 1, "webhook": receiver.url, "webhook_events_filter": terminal}
        latencies: list[float] = []  # succeeded jobs whose webhook arrived inside the window
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[str] = []  # any other end: an error, a failed or canceled job

        def client_loop() -> None:
            http = s.http(maxsize=2)
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    job = post_json(http, api + "/v1/jobs", body)
                    _, kind = receiver.wait_end(job["id"], timeout_s=30)
                except Exception as exc:  # recorded, not fatal
                    errors.append(repr(exc))
                    continue
                if kind != "job.succeeded":
                    errors.append(f"{job['id']}: {kind}")
                    continue
                with lock:
                    if not stop.is_set():
                        latencies.append(time.perf_counter() - started)

        for _ in range(20):  # warm-up
            receiver.wait_terminal(post_json(s.http(), api + "/v1/jobs", body)["id"])
        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
        groups = s.components()
        cpu0, own0 = cpu_by_component(groups), cpu_seconds([os.getpid()])
        started = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        with lock:
            done = len(latencies)
            elapsed = time.perf_counter() - started
        cpu1, own1 = cpu_by_component(groups), cpu_seconds([os.getpid()])
        for t in threads:
            t.join(35)
        receiver.close()
    return {
        "clients": clients,
        "seconds": seconds,
        "workers": workers,
        "api_workers": api_workers,
        "jobs": done,
        "jobs_per_s": round(done / elapsed, 1),
        "latency": summary_ms(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "valid": not errors,
        "cpu_ms_per_job": {
            **{k: round((cpu1[k] - cpu0[k]) / done * 1000, 2) for k in cpu0},
            "clients+receiver": round((own1 - own0) / done * 1000, 2),
        },
    }
