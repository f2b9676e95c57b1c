"""Fault tests with real processes: every accepted job ends in exactly one terminal state with
one set of outputs, whatever is killed. Each test has its own redis-server (AOF on) so it can
be restarted, and the worker launcher so killed workers come back. Figures are printed
(run with -s to see them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from dq.procs import Service, stop_process, wait_until
from dq.redis_server import start_redis
from dq.seaweedfs import create_bucket, s3_env, start_seaweedfs
from jobs.settings import Settings
from jobs.workers import WorkerRegistry
from tests.conftest import BUCKET, REPO_ROOT
from tests.helpers import s3_keys

TERMINAL = ("succeeded", "failed", "canceled")
FAST = {  # compressed timings: short leases, frequent heartbeats and reconciler ticks
    "DQ_LEASE_S": "2",
    "DQ_HEARTBEAT_S": "0.5",
    "DQ_RECONCILE_INTERVAL_S": "0.5",
    "DQ_PUBLISH_GRACE_S": "1",
    "DQ_BACKEND": "emulated",
}


class FaultStack:
    """redis-server (restartable in place), SeaweedFS, the Flask app and launchers."""

    def __init__(self, root: Path, s3: Service, models_dir: Path) -> None:
        self.root = root
        self.s3 = s3
        self.models_dir = models_dir
        self.redis = start_redis(root / "redis")
        self.port = int(self.redis.extra["port"])
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: list[redis.Redis] = []
        self.apps: list[Flask] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def settings(self) -> Settings:
        return Settings(redis_url=self.url, models_dir=self.models_dir, s3_bucket=BUCKET, s3_endpoint_url=self.s3.url)

    def app(self) -> Flask:
        from api import create_app

        app = create_app(self.settings().with_(auth=False))  # faults, not identity, are tested here
        self.apps.append(app)
        return app

    def client(self) -> redis.Redis:
        if not self.clients:
            self.clients.append(redis.Redis.from_url(self.url))
        return self.clients[0]

    def stop_redis(self) -> None:
        self.redis.stop()  # SIGTERM: redis fsyncs the AOF and exits

    def start_redis(self) -> None:
        self.redis = start_redis(self.root / "redis", port=self.port)

    def launch(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        full = dict(os.environ)
        full.update(s3_env(self.s3, BUCKET))
        full.update({"DQ_REDIS_URL": self.url, "DQ_MODELS_DIR": str(self.models_dir), "PYTHONUNBUFFERED": "1"})
        full.update(FAST)
        full.update(env)
        log = (self.root / f"launcher-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dq", "worker", "--model", "tiny-sd", *args],
            env=full,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def worker_pids(self) -> list[int]:
        return [w.pid for w in WorkerRegistry(self.client()).live() if w.state in ("ready", "busy")]

    def close(self) -> None:
        for proc in self.procs:
            stop_process(proc, grace_s=30)
        for client in self.clients + [app.extensions["dq"].redis for app in self.apps]:
            client.close()
        self.redis.stop()


@pytest.fixture
def stack(
    tmp_path: Path, s3_service: Service, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultStack]:
    for name, value in s3_env(s3_service, BUCKET).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    fault_stack = FaultStack(tmp_path, s3_service, models_dir)
    yield fault_stack
    fault_stack.close()


def submit(client: FlaskClient, n: int, **body: Any) -> list[str]:
    ids = []
    for i in range(n):
        response = client.post("/v1/jobs", json={"prompt": f"job {i}", "num_inference_steps": 10, **body})
        assert response.status_code == 202, response.get_data(as_text=True)
        ids.append(response.get_json()["id"])
    return ids


def finals(client: FlaskClient, ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and len(done) < len(ids):
        for job_id in ids:
            if job_id not in done:
                job = client.get(f"/v1/jobs/{job_id}").get_json()
                if job["status"] in TERMINAL:
                    done[job_id] = job
        time.sleep(0.1)
    missing = {i: client.get(f"/v1/jobs/{i}").get_json()["status"] for i in ids if i not in done}
    assert not missing, f"not finished after {timeout_s}s: {missing}"
    return done


def assert_nothing_in_flight(r: redis.Redis) -> None:
    assert r.zcard("dq:jobs:queued") == 0 and r.zcard("dq:jobs:running") == 0
    assert r.zcard("dq:pending:tiny-sd") == 0 and r.zcard("dq:picked:tiny-sd") == 0


def test_sigkill_workers_mid_generation(stack: FaultStack) -> None:
    launcher = stack.launch("--cores", "2", DQ_EMULATED_SECONDS="0.6")
    wait_until(lambda: len(stack.worker_pids()) == 1, 60, "worker", launcher)
    client = stack.app().test_client()
    ids = submit(client, 12)
    r = stack.client()
    killed: list[str] = []
    started = time.monotonic()
    for _ in range(3):  # kill the worker while it is generating, three times across the backlog

        def generating() -> bool:  # a job not killed before: each victim must get its retry
            running = [i.decode() for i in r.zrange("dq:jobs:running", 0, -1)]
            return (
                bool(running)
                and running[0] not in killed
                and int(r.hget(f"dq:job:{running[0]}", "progress_step") or 0) >= 1
            )

        wait_until(generating, 60, "a job mid-generation")
        victim = r.zrange("dq:jobs:running", 0, -1)[0].decode()
        (pid,) = stack.worker_pids()
        os.kill(pid, signal.SIGKILL)
        killed.append(victim)
        wait_until(
            lambda dead=pid: bool(stack.worker_pids()) and dead not in stack.worker_pids(), 60, "restart", launcher
        )
    done = finals(client, ids, 120)
    elapsed = time.monotonic() - started
    assert all(job["status"] == "succeeded" for job in done.values()), done
    for job_id in killed:
        assert done[job_id]["attempts"] >= 2
    for job_id, job in done.items():
        assert len(job["outputs"]) == 1 and s3_keys(stack.s3, BUCKET, f"outputs/tiny-sd/{job_id}/") == [
            job["outputs"][0]["key"]
        ]
    assert_nothing_in_flight(r)
    attempts = sorted(job["attempts"] for job in done.values())
    print(f"\nsigkill: {len(ids)} jobs, {len(killed)} kills, attempts {attempts}, all succeeded in {elapsed:.1f}s")


def test_redis_restart_loses_no_job(stack: FaultStack) -> None:
    launcher = stack.launch("--cores", "2", DQ_EMULATED_SECONDS="0.15")
    wait_until(lambda: len(stack.worker_pids()) == 1, 60, "worker", launcher)
    client = stack.app().test_client()
    ids = submit(client, 30)
    wait_until(lambda: stack.client().zcard("dq:jobs:succeeded") >= 3, 60, "a few done")
    stack.stop_redis()
    down_at = time.monotonic()
    time.sleep(2)
    stack.start_redis()
    restored = stack.client().zcard("dq:jobs")
    done = finals(client, ids, 120)
    recovery = time.monotonic() - down_at
    assert restored == 30
    assert all(job["status"] == "succeeded" for job in done.values()), {k: v["status"] for k, v in done.items()}
    assert_nothing_in_flight(stack.client())
    attempts = sorted(job["attempts"] for job in done.values())
    print(
        f"\nredis restart: 30 jobs kept across the restart, all succeeded {recovery:.1f}s after it; attempts {attempts}"
    )


def test_s3_outage_during_uploads(stack: FaultStack, tmp_path: Path) -> None:
    s3 = start_seaweedfs(tmp_path / "own-s3")
    stack.s3 = s3
    try:
        create_bucket(s3.url, BUCKET, s3.extra["access_key"], s3.extra["secret_key"])
        launcher = stack.launch("--cores", "2", DQ_EMULATED_SECONDS="0.2")
        wait_until(lambda: len(stack.worker_pids()) == 1, 60, "worker", launcher)
        client = stack.app().test_client()
        ids = submit(client, 20)
        wait_until(lambda: stack.client().zcard("dq:jobs:succeeded") >= 2, 60, "a few done")
        ports = tuple(int(p) for p in s3.extra["ports"].split(","))
        s3.proc.kill()
        s3.proc.wait()
        down_at = time.monotonic()
        time.sleep(4)
        s3 = start_seaweedfs(tmp_path / "own-s3", ports=ports)  # type: ignore[arg-type]
        stack.s3 = s3
        done = finals(client, ids, 150)
        recovery = time.monotonic() - down_at
        assert all(job["status"] == "succeeded" for job in done.values()), {k: v["error"] for k, v in done.items()}
        assert all(s3_keys(s3, BUCKET, f"outputs/tiny-sd/{job_id}/") for job_id in ids)
        print(f"\ns3 outage: 4 s down mid-backlog, 20/20 succeeded, backlog drained {recovery:.1f}s after the kill")
    finally:
        stop_process(s3.proc, grace_s=3)


def test_poison_job_fails_with_max_attempts(stack: FaultStack) -> None:
    launcher = stack.launch("--cores", "2", DQ_BACKEND="tests.support:poison_backend", DQ_EMULATED_SECONDS="0.1")
    wait_until(lambda: len(stack.worker_pids()) == 1, 60, "worker", launcher)
    client = stack.app().test_client()
    poison = submit(client, 1, prompt="poison pill")[0]
    behind = submit(client, 5)
    started = time.monotonic()
    done = finals(client, [poison, *behind], 120)
    assert done[poison]["status"] == "failed"
    assert done[poison]["error"]["type"] == "max_attempts" and done[poison]["attempts"] == 3
    assert all(done[j]["status"] == "succeeded" for j in behind)
    assert_nothing_in_flight(stack.client())
    print(
        f"\npoison: failed max_attempts after 3 worker deaths; 5 jobs behind it succeeded; "
        f"{time.monotonic() - started:.1f}s"
    )


def test_api_answers_503_while_redis_is_down(stack: FaultStack) -> None:
    client = stack.app().test_client()
    assert client.post("/v1/jobs", json={"prompt": "before"}).status_code == 202
    stack.stop_redis()
    response = client.post("/v1/jobs", json={"prompt": "during"})
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    stack.start_redis()
    after = client.post("/v1/jobs", json={"prompt": "after"})
    assert after.status_code == 202
    r = stack.client()
    assert r.zcard("dq:jobs") == 2  # the rejected one left nothing behind
