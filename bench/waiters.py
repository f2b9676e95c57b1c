"""Scenario — many waiting clients: 1,000 clients wait for their own job at once, half on the
SSE stream (``GET /v1/jobs/<id>/events``), half on a long poll (``GET /v1/jobs/<id>?wait=60``),
while wrk submits new jobs as fast as it can. Reported: submits/s during the wait, and for each
waiter how long after its job's state change (``completed_at``) it saw the terminal state
(p50 / p95 / max). The API runs under gunicorn's gevent workers (``api/gunicorn_conf.py``).

The waiters are one asyncio process (``asyncio`` streams over raw HTTP/1.1: 1,000 sockets,
no thread per waiter on the client side either); the jobs run on emulated workers after every
waiter is connected (the model is paused until then).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import threading
import time
from datetime import datetime
from typing import Any

from bench.api_capacity import SUBMIT_LUA, wrk
from bench.harness import Stack, pct, stack


async def _request(host: str, port: int, path: str, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, limit=2**20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def sse_waiter(host: str, port: int, job_id: str, key: str) -> float:
    """Seconds since the epoch when the stream delivered the job's terminal event."""
    reader, writer = await _request(host, port, f"/v1/jobs/{job_id}/events", key)
    try:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("stream ended before the terminal event")
            if line.startswith(b"event: job.") and line.strip().rsplit(b".", 1)[1] in (b"succeeded", b"failed"):
                return time.time()
    finally:
        writer.close()


async def poll_waiter(host: str, port: int, job_id: str, key: str) -> float:
    """Seconds since the epoch when a long poll answered with the job terminal (re-asks if not)."""
    while True:
        reader, writer = await _request(host, port, f"/v1/jobs/{job_id}?wait=60", key)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
            body = json.loads(await reader.readexactly(length))
        finally:
            writer.close()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return time.time()


async def wait_all(host: str, port: int, job_ids: list[str], key: str, connected: threading.Event) -> list[float]:
    waiters = [
        asyncio.create_task((sse_waiter if i % 2 == 0 else poll_waiter)(host, port, job_id, key))
        for i, job_id in enumerate(job_ids)
    ]
    await asyncio.sleep(3)  # let every waiter connect before the jobs run
    connected.set()
    return list(await asyncio.gather(*waiters))


def seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def run(waiters: int = 1000, workers: int = 8, job_s: float = 0.3, submit_s: int = 10) -> dict[str, Any]:
    with stack() as s:
        api = s.start_api()
        http = s.http(maxsize=8)
        pause = s.http().request("POST", api + "/v1/models/tiny-sd/pause")
        assert pause.status == 200, pause.data
        body = {"prompt": "waited for", "num_inference_steps": 4}
        job_ids = []
        for _ in range(waiters // 100):
            reply = http.request(
                "POST",
                api + "/v1/jobs/batch",
                body=json.dumps({"jobs": [body] * 100}).encode(),
                headers={**http.headers, "Content-Type": "application/json"},
            )
            job_ids += [item["job"]["id"] for item in json.loads(reply.data)["data"]]
        s.start_workers(workers, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS=str(job_s))
        connected = threading.Event()
        seen: list[float] = []
        port = int(api.rsplit(":", 1)[1])
        waiting = threading.Thread(
            target=lambda: seen.extend(asyncio.run(wait_all("127.0.0.1", port, job_ids, s.api_key, connected)))
        )
        waiting.start()
        connected.wait(60)
        s.http().request("POST", api + "/v1/models/tiny-sd/resume")
        submits = submit_load(s, submit_s)
        waiting.join(600)
        finals = {j: json.loads(http.request("GET", f"{api}/v1/jobs/{j}").data) for j in job_ids}
    lags = [at - seconds(finals[j]["completed_at"]) for j, at in zip(job_ids, seen, strict=True)]
    ms = [lag * 1000 for lag in lags]
    return {
        "waiters": waiters,
        "sse": waiters // 2,
        "long_poll": waiters - waiters // 2,
        "submits_during_the_wait": submits,
        "lag_after_state_change_ms": {
            "p50": round(statistics.median(ms), 1),
            "p95": round(pct(ms, 0.95), 1),
            "max": round(max(ms), 1),
        },
        "all_terminal": all(f["status"] == "succeeded" for f in finals.values()),
    }


def submit_load(s: Stack, seconds_: int) -> dict[str, Any]:
    """wrk submitting jobs (another tenant's key, so the waiters' jobs keep their places)."""
    from jobs.tenants import KeyStore

    _, key = KeyStore(s.client()).create("load", rate_limit_per_s=1e6, rate_limit_burst=10**6, max_active_jobs=10**9)
    try:
        return wrk(
            s.api_url + "/v1/jobs", seconds_, 32, SUBMIT_LUA + f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        )
    except subprocess.CalledProcessError as exc:
        return {"error": str(exc)}
