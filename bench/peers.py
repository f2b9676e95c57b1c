"""Scenario — side by side with Cog, in the same run, by the same method.

The peer harness (``../shared/peers``, copied to ``/tmp/peers`` and installed there with its
``setup.sh``: Cog 0.23.1 in ``/tmp/peers-venvs``) measures Cog; this module measures us the
way it measures Cog, interleaved round by round (Cog, us, Cog, us, …), each on a fresh server:

- **overhead**: 10 warm-up then 50 sequential jobs of a no-op model, each from sending the
  submit until its terminal webhook has arrived at a local receiver, minus the raw model call
  (Cog: ``bench/bench.py --peer cog --model noop --phases latency``: PUT + ``Prefer:
  respond-async`` + webhook; us: ``POST /v1/jobs`` with a webhook filtered to terminal events,
  and the same jobs followed on their event stream instead, ``GET /v1/jobs/<id>/events``,
  opened when the submit answers — only ``job.succeeded`` counts as a completion);
- **throughput**: 16 concurrent clients for 20 s, each submitting a no-op job and waiting for
  its terminal webhook, then the next; only jobs completed inside the window count (Cog:
  ``--model noop_async --slots 16 --phases throughput``, its fastest async mode). Server CPU
  per job: utime + stime of every process of the server (ours: API, workers, deliverer, Redis,
  SeaweedFS) over the window ÷ completions.

The client is the peer harness's: aiohttp in one process that is also the webhook receiver,
on the same 2 cores as the servers. Each figure is reported per round; the summary is the
median of the rounds' same-run ratios.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.harness import Stack, cpu_by_component, pct, stack

PEERS_DIR = Path("/tmp/peers")
PEERS_VENVS = Path("/tmp/peers-venvs")
TERMINAL = ("job.succeeded", "job.failed", "job.canceled")


class Receiver:
    """Webhooks of our jobs: a future per job id, resolved by its terminal event (aiohttp, like
    the peer harness's receiver)."""

    def __init__(self) -> None:
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.early: dict[str, float] = {}

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
        return self

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        now = time.perf_counter()
        if body["type"] in TERMINAL:
            self.arrived(body["data"]["id"], now if body["type"] == "job.succeeded" else -1.0)
        return web.Response(status=204)

    def arrived(self, job_id: str, at: float) -> None:
        waiter = self.waiters.pop(job_id, None)
        if waiter is None or waiter.done():
            self.early[job_id] = at
        elif at < 0:  # failed or canceled: an error, never a completion
            waiter.set_exception(RuntimeError(f"job {job_id} did not succeed"))
        else:
            waiter.set_result(at)

    def expect(self, job_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[job_id] = future
        if job_id in self.early:
            self.arrived(job_id, self.early.pop(job_id))
        return future


async def one_job(session: aiohttp.ClientSession, api: str, key: str, receiver: Receiver, seed: int) -> float:
    """Seconds from sending the submit to the terminal webhook's arrival."""
    started = time.perf_counter()
    body = {
        "prompt": "a pig with wings",
        "num_inference_steps": 1,
        "seed": seed,
        "webhook": receiver.url,
        "webhook_events_filter": ["succeeded", "failed", "canceled"],
    }
    async with session.post(f"{api}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"}) as reply:
        job = await reply.json()
        if reply.status != 202:
            raise RuntimeError(f"submit {reply.status}: {job}")
    arrived = await asyncio.wait_for(receiver.expect(job["id"]), 60)
    return arrived - started


async def one_job_sse(session: aiohttp.ClientSession, api: str, key: str, seed: int) -> float:
    """Seconds from sending the submit to reading ``job.succeeded`` on the job's event stream
    (``GET /v1/jobs/<id>/events``, opened as soon as the submit answers)."""
    headers = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    body = {"prompt": "a pig with wings", "num_inference_steps": 1, "seed": seed}
    async with session.post(f"{api}/v1/jobs", json=body, headers=headers) as reply:
        job = await reply.json()
        if reply.status != 202:
            raise RuntimeError(f"submit {reply.status}: {job}")
    async with session.get(f"{api}/v1/jobs/{job['id']}/events", headers=headers) as stream:
        async for line in stream.content:
            if line.startswith(b"event: job."):
                kind = line[len(b"event: ") :].strip().decode()
                if kind == "job.succeeded":
                    return time.perf_counter() - started
                if kind in TERMINAL:
                    raise RuntimeError(f"job {job['id']}: {kind}")
    raise RuntimeError(f"job {job['id']}: the stream ended without a terminal event")


async def ours_latency_sse(api: str, key: str, n: int, warmup: int) -> list[float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for i in range(warmup):
            await one_job_sse(session, api, key, 30_000 + i)
        return [await one_job_sse(session, api, key, 40_000 + i) for i in range(n)]


async def ours_latency(api: str, key: str, n: int, warmup: int) -> list[float]:
    receiver = await Receiver().start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for i in range(warmup):
                await one_job(session, api, key, receiver, 10_000 + i)
            return [await one_job(session, api, key, receiver, i) for i in range(n)]
    finally:
        await receiver.runner.cleanup()


async def ours_throughput(s: Stack, clients: int, duration: float) -> dict[str, Any]:
    receiver = await Receiver().start()
    groups = s.components()
    latencies: list[float] = []
    errors = 0
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(
                *(one_job(session, s.api_url, s.api_key, receiver, 20_000 + i) for i in range(clients))
            )
            await asyncio.sleep(1.0)
            cpu0, own0 = cpu_by_component(groups), _self_cpu()
            deadline = time.perf_counter() + duration

            async def client(k: int) -> None:
                nonlocal errors
                seed = k * 1_000_000
                while time.perf_counter() < deadline:
                    seed += 1
                    try:
                        latency = await one_job(session, s.api_url, s.api_key, receiver, seed)
                    except Exception:  # counted, not fatal
                        errors += 1
                        continue
                    if time.perf_counter() <= deadline:
                        latencies.append(latency)

            await asyncio.gather(*(client(k) for k in range(clients)))
            cpu1, own1 = cpu_by_component(groups), _self_cpu()
    finally:
        await receiver.runner.cleanup()
    done = len(latencies)
    return {
        "completed": done,
        "throughput_per_s": round(done / duration, 1),
        "errors": errors,
        "lat_p50_ms": round(pct(latencies, 0.5) * 1000, 2),
        "server_cpu_ms_per_job": round(sum(cpu1[k] - cpu0[k] for k in cpu0) / max(done, 1) * 1000, 2),
        "server_cpu_ms_per_job_by_component": {k: round((cpu1[k] - cpu0[k]) / max(done, 1) * 1000, 2) for k in cpu0},
        "client_cores": round((own1 - own0) / duration, 2),
    }


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def cog(model: str, phases: str, tag: str, slots: int = 1) -> dict[str, Any]:
    """One run of the peer harness's Cog benchmark (a fresh server); its result JSON."""
    command = [
        str(PEERS_VENVS / "client" / "bin" / "python"),
        str(PEERS_DIR / "bench" / "bench.py"),
        "--peer",
        "cog",
        "--model",
        model,
        "--phases",
        phases,
        "--slots",
        str(slots),
        "--tag",
        tag,
        "--no-raw",
    ]
    subprocess.run(command, check=True, cwd=PEERS_DIR, stdout=subprocess.DEVNULL, timeout=900)
    result: dict[str, Any] = json.loads((PEERS_DIR / "results" / f"{tag}.json").read_text())
    return result


def raw_noop_ms() -> float:
    """Our no-op backend called in-process (the emulated backend with 0 s): the raw model call."""
    from worker.pipelines.base import GenerationRequest
    from worker.pipelines.emulated import EmulatedBackend

    backend = EmulatedBackend(0.0)
    request = GenerationRequest("a pig with wings", None, 1, 7.5, 1, 64, 64, 1)
    times = []
    for _ in range(60):
        started = time.perf_counter()
        backend.generate(request, lambda step: None)
        times.append(time.perf_counter() - started)
    return statistics.median(times[10:]) * 1000


def run(rounds: int = 3, n: int = 50, warmup: int = 10, clients: int = 16, duration: float = 20.0) -> dict[str, Any]:
    if not (PEERS_VENVS / "cog" / "bin" / "python").exists():
        raise RuntimeError("Cog is not installed: cp -r ../shared/peers /tmp/peers && /tmp/peers/setup.sh")
    raw_ms = raw_noop_ms()
    per_round = []
    for r in range(rounds):
        cog_latency = cog("noop", "latency", f"dq-bench-cog-noop-r{r}")["latency"]["async"]
        with stack() as s:
            s.start_api()
            s.start_webhooks()
            s.start_workers(1, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0")
            ours = [x * 1000 for x in asyncio.run(ours_latency(s.api_url, s.api_key, n, warmup))]
            sse = [x * 1000 for x in asyncio.run(ours_latency_sse(s.api_url, s.api_key, n, warmup))]
        cog_tp = cog("noop_async", "throughput", f"dq-bench-cog-noop16-r{r}", slots=16)["throughput"]["async"]
        with stack() as s:
            s.start_api()
            s.start_webhooks()
            s.start_workers(4, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0")
            ours_tp = asyncio.run(ours_throughput(s, clients, duration))
        per_round.append(
            {
                "cog_overhead_p50_ms": round(cog_latency["p50_ms"] - 0.03, 2),
                "cog_overhead_p95_ms": round(cog_latency["p95_ms"] - 0.03, 2),
                "ours_overhead_p50_ms": round(statistics.median(ours) - raw_ms, 2),
                "ours_overhead_p95_ms": round(pct(ours, 0.95) - raw_ms, 2),
                "ours_sse_overhead_p50_ms": round(statistics.median(sse) - raw_ms, 2),
                "ours_sse_overhead_p95_ms": round(pct(sse, 0.95) - raw_ms, 2),
                "cog_throughput_per_s": round(cog_tp["throughput_per_s"], 1),
                "cog_server_cpu_ms_per_job": round(cog_tp["server_cpu_ms_per_pred"], 2),
                "cog_errors": cog_tp["errors"],
                "ours": ours_tp,
            }
        )
    return {"raw_noop_ms": round(raw_ms, 3), "rounds": per_round, "summary": summary(per_round)}


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the same-run ratios, and every round's ratio (a miss in any round shows)."""
    overhead = [r["ours_overhead_p50_ms"] / r["cog_overhead_p50_ms"] for r in rounds]
    sse = [r["ours_sse_overhead_p50_ms"] / r["cog_overhead_p50_ms"] for r in rounds]
    throughput = [r["ours"]["throughput_per_s"] / r["cog_throughput_per_s"] for r in rounds]
    cpu = [r["ours"]["server_cpu_ms_per_job"] / r["cog_server_cpu_ms_per_job"] for r in rounds]
    return {
        "overhead_ratio_median": round(statistics.median(overhead), 3),
        "overhead_ratios": [round(x, 3) for x in overhead],
        "sse_overhead_ratio_median": round(statistics.median(sse), 3),
        "sse_overhead_ratios": [round(x, 3) for x in sse],
        "throughput_ratio_median": round(statistics.median(throughput), 3),
        "throughput_ratios": [round(x, 3) for x in throughput],
        "cpu_per_job_ratio_median": round(statistics.median(cpu), 3),
        "cpu_per_job_ratios": [round(x, 3) for x in cpu],
    }
