"""Shared pieces of the benchmarks: real services on free ports, the API under gunicorn,
worker processes, a webhook receiver that timestamps arrivals, and statistics."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import urllib3

from dq.procs import Service, free_port, process_tree, stop_process, wait_until
from dq.redis_server import start_redis
from dq.seaweedfs import create_bucket, s3_env, start_seaweedfs
from dq.stack import api_command
from jobs.keys import Keys
from jobs.tenants import KeyStore
from jobs.workers import WorkerRegistry

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "dq-bench"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # benchmark-only secret


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2) if ms else float("nan"),
        "p95_ms": round(pct(ms, 0.95), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


class Receiver:
    """A webhook receiver on 127.0.0.1 that records (arrival time, event type) per job."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[tuple[float, str]]] = {}
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.perf_counter()
                event = json.loads(body)
                with receiver.cond:
                    receiver.arrivals.setdefault(event["data"]["id"], []).append((now, event["type"]))
                    receiver.cond.notify_all()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_terminal(self, job_id: str, timeout_s: float = 60) -> float:
        return self.wait_end(job_id, timeout_s)[0]

    def wait_end(self, job_id: str, timeout_s: float = 60) -> tuple[float, str]:
        """(arrival time, event type) of the job's terminal webhook."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for at, kind in self.arrivals.get(job_id, []):
                    if kind in ("job.succeeded", "job.failed", "job.canceled"):
                        return at, kind
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no terminal webhook for {job_id}")
                self.cond.wait(remaining)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    """Redis + SeaweedFS + (optionally) gunicorn API, webhook deliverer and workers."""

    workdir: Path
    redis_service: Service
    s3: Service
    models_dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api_url: str = ""
    api_key: str = ""  # an admin key with limits that a benchmark never reaches (the checks still run)

    def http(self, maxsize: int = 4) -> urllib3.PoolManager:
        """A connection pool that sends the benchmark's API key with every request."""
        return urllib3.PoolManager(maxsize=maxsize, headers={"Authorization": f"Bearer {self.api_key}"})

    @property
    def redis_url(self) -> str:
        return self.redis_service.url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def spawn(self, name: str, cmd: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra_env)
        logs = ROOT / "bench" / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = (logs / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def components(self) -> dict[str, list[Any]]:
        """This stack's processes by component, for CPU accounting (``cpu_by_component``)."""
        return {
            "api": [p for p in self.procs if "gunicorn" in p.args],
            "workers": [p for p in self.procs if "worker-process" in p.args],
            "webhooks": [p for p in self.procs if "webhooks" in p.args],
            "redis": [self.redis_service.proc],
            "s3": [self.s3.proc],
        }

    def start_api(self, workers: int = 2, app: str = "api:create_app()", **env: str) -> str:
        port = free_port()
        self.spawn("api", api_command(f"127.0.0.1:{port}", workers, app), **env)
        url = f"http://127.0.0.1:{port}"
        http = urllib3.PoolManager(retries=False)
        wait_until(lambda: http.request("GET", url + "/healthz", timeout=1).status == 200, 30, "api")
        self.api_url = url
        return url

    def start_webhooks(self, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("webhooks", [sys.executable, "-m", "dq", "webhooks"], **env)

    def start_workers(self, count: int, model: str = "tiny-sd", wait: bool = True, **env: str) -> list[Any]:
        procs = []
        for i in range(count):
            procs.append(
                self.spawn(
                    f"worker{i}",
                    [sys.executable, "-m", "dq", "worker-process", "--model", model],
                    DQ_WORKER_NAME=f"bench{i}@{model}",
                    **env,
                )
            )
        if wait:
            self.wait_workers(count, model)
        return procs

    def wait_workers(self, count: int, model: str = "tiny-sd", timeout_s: float = 300) -> None:
        registry = WorkerRegistry(self.client(), Keys())

        def ready() -> bool:
            return sum(1 for w in registry.live() if w.model == model and w.state in ("ready", "busy")) >= count

        wait_until(ready, timeout_s, f"{count} workers")

    def stop_workers(self) -> None:
        for proc in self.procs:
            if "worker-process" in proc.args:
                stop_process(proc, grace_s=30)

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, grace_s=15)
        self.procs.clear()


@contextmanager
def stack(models_dir: Path | None = None, **env: str) -> Iterator[Stack]:
    from worker.pipelines.tiny import EMBEDDED_MODEL, ensure_embedded_model

    models = models_dir or ROOT / "compiled"
    ensure_embedded_model(models, EMBEDDED_MODEL)
    with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp:
        workdir = Path(tmp)
        redis_service = start_redis(workdir / "redis")
        s3 = start_seaweedfs(workdir / "s3")
        try:
            create_bucket(s3.url, BUCKET, s3.extra["access_key"], s3.extra["secret_key"])
            base_env = {
                **s3_env(s3, BUCKET),
                "DQ_REDIS_URL": redis_service.url,
                "DQ_MODELS_DIR": str(models),
                "DQ_WEBHOOK_SECRET": SECRET,
                "DQ_WEBHOOK_ALLOWLIST": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
                **env,
            }
            os.environ.update({k: v for k, v in base_env.items() if k.startswith("AWS_")})
            bench_stack = Stack(workdir, redis_service, s3, models, base_env)
            _, bench_stack.api_key = KeyStore(redis.Redis.from_url(redis_service.url)).create(
                "bench",
                label="bench",
                admin=True,
                rate_limit_per_s=1e6,
                rate_limit_burst=1_000_000,
                max_active_jobs=10**9,
            )
            try:
                yield bench_stack
            finally:
                bench_stack.close()
        finally:
            s3.stop()
            redis_service.stop()


def post_json(http: urllib3.PoolManager, url: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {**http.headers, "Content-Type": "application/json"}
    reply = http.request("POST", url, body=json.dumps(body).encode(), headers=headers)
    if reply.status != 202:
        raise RuntimeError(f"submit failed: {reply.status} {reply.data[:300]!r}")
    result: dict[str, Any] = json.loads(reply.data)
    return result


def get_json(http: urllib3.PoolManager, url: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(http.request("GET", url).data)
    return result


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def cpu_by_component(procs: dict[str, list[subprocess.Popen[bytes]]]) -> dict[str, float]:
    return {name: cpu_seconds([p for proc in group for p in process_tree(proc.pid)]) for name, group in procs.items()}


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"
