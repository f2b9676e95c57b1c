"""Scenario 4 — fleet simulation: many emulated workers (0.5 s jobs) on one Redis. Completed
jobs/s against the ideal (workers ÷ job time) and Redis commands per job from INFO
commandstats (which counts the calls our Lua scripts make too) and, over a short MONITOR
window, split into commands clients send and commands run inside scripts."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from bench.harness import post_json, stack


def monitor_counts(url: str, seconds: float) -> tuple[int, int]:
    """(commands sent by clients, commands run inside Lua scripts) seen by MONITOR in ``seconds``."""
    client = redis.Redis.from_url(url)
    sent = inner = 0
    deadline = time.monotonic() + seconds
    with client.monitor() as monitor:
        while time.monotonic() < deadline:
            command = monitor.next_command()
            if command.get("client_type") == "lua" or command.get("client_address") == "lua":
                inner += 1
            else:
                sent += 1
    client.close()
    return sent, inner


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def run(workers: int = 48, job_s: float = 0.5, window_s: float = 20.0, steps: int = 10) -> dict[str, Any]:
    ideal = workers / job_s
    with stack(DQ_HEARTBEAT_S="2") as s:
        api = s.start_api()
        s.start_workers(workers, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS=str(job_s), wait=False)
        s.wait_workers(workers, timeout_s=600)
        client = s.client()
        http = s.http(maxsize=8)
        body = {"prompt": "fleet", "num_inference_steps": steps}
        stop = threading.Event()

        def feeder() -> None:  # keep a backlog of about 2 × workers
            while not stop.is_set():
                depth = client.zcard("dq:pending:tiny-sd")
                for _ in range(max(0, 2 * workers - depth)):
                    post_json(http, api + "/v1/jobs", body)
                time.sleep(0.05)

        thread = threading.Thread(target=feeder, daemon=True)
        thread.start()
        time.sleep(5)  # reach steady state
        done0, stats0, t0 = client.zcard("dq:jobs:succeeded"), commandstats(client), time.monotonic()
        time.sleep(window_s)
        done1, stats1, t1 = client.zcard("dq:jobs:succeeded"), commandstats(client), time.monotonic()
        # Which of those commands crossed the network: MONITOR tells client commands from the
        # ones our Lua scripts run (a short window: MONITOR itself costs Redis some CPU).
        done_m0 = client.zcard("dq:jobs:succeeded")
        sent, inner = monitor_counts(s.redis_url, 4.0)
        done_m = client.zcard("dq:jobs:succeeded") - done_m0
        stop.set()
        thread.join()
    completed = done1 - done0
    delta = {k: stats1.get(k, 0) - stats0.get(k, 0) for k in stats1}
    delta = {k: v for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v > 0}
    total = sum(delta.values())
    rate = completed / (t1 - t0)
    return {
        "workers": workers,
        "job_seconds": job_s,
        "steps": steps,
        "completed_per_s": round(rate, 2),
        "ideal_per_s": ideal,
        "fraction_of_ideal": round(rate / ideal, 4),
        "redis_commands_per_job": round(total / completed, 1) if completed else None,
        "monitor_window": {
            "jobs": done_m,
            "client_commands_per_job": round(sent / done_m, 1) if done_m else None,
            "commands_inside_scripts_per_job": round(inner / done_m, 1) if done_m else None,
        },
        "commands_by_name_per_job": {k: round(v / completed, 2) for k, v in list(delta.items())[:15]}
        if completed
        else {},
    }
