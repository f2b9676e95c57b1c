"""``dq up`` as a user runs it (a subprocess: Redis, SeaweedFS, gunicorn, the webhook deliverer
and the worker launcher), driven by the ``dq`` client commands; SIGTERM leaves no process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dq.procs import free_port, process_tree, stop_process, wait_until
from tests.conftest import REPO_ROOT


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def dq(api: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dq", *args, "--api", api],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def test_dq_up_serves_the_client_commands_and_stops_clean(tmp_path: Path, models_dir: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DQ_", "AWS_"))}
    env.update({"DQ_MODELS_DIR": str(models_dir), "DQ_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = str(REPO_ROOT)  # this checkout's code, whichever one the environment installed
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "dq", "up", "--api-port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_until(lambda: b"dq: ready" in (tmp_path / "up.log").read_bytes(), 120, "dq up", up)
        secret = tmp_path / ".dq-webhook-secret"
        assert secret.read_text().strip().startswith("whsec_") and secret.stat().st_mode & 0o077 == 0

        done = dq(
            api, "submit", "a pig with wings", "--steps", "3", "--seed", "5", "--wait", "-o", "pig.png", cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)
        assert job["status"] == "succeeded" and job["input"]["seed"] == 5
        assert (tmp_path / "pig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        status = dq(api, "status", job["id"], "--json", cwd=tmp_path)
        assert json.loads(status.stdout)["id"] == job["id"]
        refused = dq(api, "cancel", job["id"], cwd=tmp_path)
        assert refused.returncode == 1 and "409" in refused.stderr
        bad = dq(api, "submit", "x", "--width", "4000", cwd=tmp_path)
        assert bad.returncode == 1 and "width" in bad.stderr
        models = json.loads(dq(api, "models", "--json", cwd=tmp_path).stdout)["data"]
        assert {m["name"] for m in models} >= {"tiny-sd", "tiny-static"}

        def ready_workers() -> int:  # the worker shows "busy" until its next heartbeat after a job
            listed = json.loads(dq(api, "models", "--json", cwd=tmp_path).stdout)["data"]
            return int(next(m for m in listed if m["name"] == "tiny-sd")["workers"]["ready"])

        wait_until(lambda: ready_workers() == 1, 30, "the worker ready again")

        # /metrics under gunicorn (two worker processes, multiprocess mode): the requests of both
        # summed, and the fleet from Redis
        key = (tmp_path / ".dq-api-key").read_text().strip()

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            request = urllib.request.Request(f"{api}/metrics", headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(response.read().decode())
                    for s in family.samples
                }

        for _ in range(8):  # a new connection each: either gunicorn worker may answer
            urllib.request.urlopen(f"{api}/openapi.json", timeout=10).close()
        document = ("dq_http_requests_total", (("method", "GET"), ("route", "/openapi.json"), ("status", "200")))
        for _ in range(4):  # whichever worker answers the scrape counts every worker's requests
            scraped = scrape()
            assert scraped[document] == 8
        submitted = (("method", "POST"), ("route", "/v1/jobs"), ("status", "202"))
        assert scraped[("dq_http_requests_total", submitted)] == 1
        finished = (("error_type", ""), ("model", "tiny-sd"), ("outcome", "succeeded"))
        assert scraped[("dq_jobs_finished_total", finished)] == 1

        tree = set(process_tree(up.pid)) - {up.pid}
        assert len(tree) >= 5  # redis, weed, gunicorn (+ its workers), webhooks, launcher (+ worker)
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in tree):
            time.sleep(0.2)
        assert not [p for p in tree if alive(p)]
    finally:
        stop_process(up, grace_s=60)
