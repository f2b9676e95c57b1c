"""``dq worker``: core detection and grouping (plain functions), then real launcher runs with
simulated NeuronCore counts, crash restarts and warm shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from dq.launcher import (
    Launcher,
    Slot,
    detect_neuron_cores,
    neuron_slots,
    parse_neuron_ls,
    plan_slots,
)
from dq.procs import Service, stop_process, wait_until
from jobs.keys import Keys
from jobs.settings import Settings
from jobs.workers import WorkerInfo, WorkerRegistry
from tests.conftest import REPO_ROOT, worker_env


def neuron_ls_json(devices: int, cores_per_device: int = 2) -> str:
    return json.dumps(
        [
            {
                "neuron_device": i,
                "bdf": f"0000:00:{i:02x}.0",
                "nc_count": cores_per_device,
                "memory_size": 34359738368,
                "neuroncore_ids": [2 * i, 2 * i + 1],
                "neuron_processes": [],
            }
            for i in range(devices)
        ]
    )


# -- plain functions ------------------------------------------------------------------


def test_parse_neuron_ls_sums_cores() -> None:
    assert parse_neuron_ls(neuron_ls_json(6)) == 12
    assert parse_neuron_ls("[]") == 0
    with pytest.raises(ValueError):
        parse_neuron_ls('{"not": "a list"}')


def test_detect_prefers_neuron_ls_then_devices(tmp_path: Path) -> None:
    assert detect_neuron_cores(run=lambda cmd: neuron_ls_json(12), device_glob=str(tmp_path / "neuron*")) == 24

    def missing(cmd: Any) -> str:
        raise FileNotFoundError(cmd[0])

    for i in range(6):
        (tmp_path / f"neuron{i}").touch()
    (tmp_path / "neuron_monitor").touch()  # not a device
    assert detect_neuron_cores(run=missing, device_glob=str(tmp_path / "neuron*")) == 12
    assert detect_neuron_cores(run=missing, device_glob=str(tmp_path / "nothing*")) == 0


@pytest.mark.parametrize(
    ("cores", "per_worker", "expected"), [(2, 2, 1), (12, 2, 6), (24, 2, 12), (24, 4, 6), (3, 2, 1)]
)
def test_core_groups_are_disjoint_and_contiguous(cores: int, per_worker: int, expected: int) -> None:
    slots = neuron_slots(cores, per_worker, "h")
    assert len(slots) == expected
    seen: list[int] = []
    for slot in slots:
        first, last = (int(x) for x in slot.cores.split("-"))
        assert last - first + 1 == per_worker
        assert slot.env == {"NEURON_RT_VISIBLE_CORES": f"{first}-{last}"}
        assert slot.name == f"nc{first}-{last}@h"
        seen.extend(range(first, last + 1))
    assert len(seen) == len(set(seen)) and max(seen) < cores


def test_first_core_offsets_the_ranges_for_a_second_launcher() -> None:
    assert [s.cores for s in neuron_slots(4, 2, "h", first_core=8)] == ["8-9", "10-11"]
    kind, slots = plan_slots(None, 2, None, None, "h", first_core=8, neuron_detector=lambda: 12)
    assert [s.cores for s in slots] == ["8-9", "10-11"]


def test_plan_picks_neuron_gpu_or_cpu() -> None:
    assert plan_slots(None, 2, None, None, "h", neuron_detector=lambda: 4, gpu_detector=lambda: 0)[0] == "neuron"
    kind, slots = plan_slots(None, 2, None, None, "h", neuron_detector=lambda: 0, gpu_detector=lambda: 2)
    assert kind == "gpu" and [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1"]
    kind, slots = plan_slots(None, 2, None, None, "h", neuron_detector=lambda: 0, gpu_detector=lambda: 0)
    assert kind == "cpu" and len(slots) == 1
    assert plan_slots(None, 2, 3, None, "h")[1] == [Slot(f"cpu{i}@h", "", {}) for i in range(3)]
    with pytest.raises(ValueError, match="cannot hold"):
        plan_slots(1, 2, None, None, "h")


def test_supervisor_restarts_with_growing_backoff() -> None:
    launcher = Launcher(
        "m", [Slot("nc0-1@h", "0-1", {})], command=[sys.executable, "-c", "import sys; sys.exit(3)"], backoff_s=1.0
    )
    child = launcher.children[0]
    launcher.supervise_once(now=0.0)  # first start
    assert child.proc is not None
    child.proc.wait()
    launcher.supervise_once(now=10.0)
    assert child.proc is None and child.next_start_at == 11.0 and child.restarts == 1
    launcher.supervise_once(now=10.5)
    assert child.proc is None  # still backing off
    launcher.supervise_once(now=11.0)
    assert child.proc is not None
    child.proc.wait()
    launcher.supervise_once(now=20.0)
    assert child.next_start_at == 22.0  # 2 s: doubled


# -- real launcher processes ------------------------------------------------------------


@pytest.fixture
def launch(s3_settings: Settings, s3_service: Service, tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, devices: int | None = None, **env: str) -> subprocess.Popen[bytes]:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        extra = dict(env)
        if devices is not None:  # a simulated neuron-ls on PATH
            script = bin_dir / "neuron-ls"
            script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{neuron_ls_json(devices)}\nEOF\n")
            script.chmod(0o755)
            extra["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
        full_env = worker_env(s3_settings, s3_service, DQ_BACKEND="emulated", **extra)
        full_env.pop("DQ_WORKER_NAME", None)
        log = (tmp_path / f"launcher-{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dq", "worker", *args],
            env=full_env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc, grace_s=30)


def live_workers(settings: Settings, model: str = "tiny-sd") -> list[WorkerInfo]:
    registry = WorkerRegistry(redis.Redis.from_url(settings.redis_url), Keys())
    return [w for w in registry.live() if w.model == model and w.state in ("ready", "busy")]


def wait_workers(
    settings: Settings, count: int, proc: subprocess.Popen[bytes], timeout_s: float = 120
) -> list[WorkerInfo]:
    wait_until(lambda: len(live_workers(settings)) == count, timeout_s, f"{count} workers", proc)
    return live_workers(settings)


@pytest.mark.parametrize(("devices", "expected"), [(1, 1), (6, 6), (12, 12)])
def test_simulated_core_counts_start_one_worker_per_pair(
    launch: Any, s3_settings: Settings, devices: int, expected: int
) -> None:
    launcher = launch("--model", "tiny-sd", devices=devices)
    workers = wait_workers(s3_settings, expected, launcher)
    host = socket.gethostname()
    assert sorted(w.name for w in workers) == sorted(f"nc{2 * i}-{2 * i + 1}@{host}" for i in range(expected))
    for w in workers:  # each process saw exactly the cores its name says
        assert w.visible_cores == w.cores == w.name[2:].split("@")[0]
    assert len({w.pid for w in workers}) == expected and launcher.pid not in {w.pid for w in workers}
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(60) == 0
    for w in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(w.pid, 0)


def test_killed_worker_is_restarted(launch: Any, s3_settings: Settings) -> None:
    launcher = launch("--model", "tiny-sd", "--cores", "4")
    before = {w.name: w.pid for w in wait_workers(s3_settings, 2, launcher)}
    victim = sorted(before)[0]
    os.kill(before[victim], signal.SIGKILL)
    wait_until(
        lambda: any(w.name == victim and w.pid != before[victim] for w in live_workers(s3_settings)),
        60,
        "restarted worker",
        launcher,
    )
    after = {w.name: w.pid for w in live_workers(s3_settings)}
    assert after.keys() == before.keys()
    assert after[victim] != before[victim]
    other = sorted(before)[1]
    assert after[other] == before[other]  # the healthy sibling was left alone


def test_sigterm_during_a_job_lets_it_finish(launch: Any, s3_settings: Settings, client: FlaskClient) -> None:
    launcher = launch("--model", "tiny-sd", "--cores", "2", DQ_EMULATED_SECONDS="3")
    (worker,) = wait_workers(s3_settings, 1, launcher, timeout_s=120)
    job = client.post("/v1/jobs", json={"prompt": "slow", "num_inference_steps": 10}).get_json()
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "running", 30, "job running")
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(60) == 0
    final = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert final["status"] == "succeeded", final
    assert final["progress"] == {"step": 10, "total": 10} and len(final["outputs"]) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(worker.pid, 0)


def test_launcher_refuses_too_few_cores(launch: Any) -> None:
    proc = launch("--model", "tiny-sd", "--cores", "1")
    assert proc.wait(60) == 2


def test_two_models_with_different_shapes_run_on_their_own_workers(client: FlaskClient, start_worker: Any) -> None:
    start_worker(model="tiny-sd", name="dyn")
    start_worker(model="tiny-static", name="static")
    dynamic_jobs = [
        client.post("/v1/jobs", json={"prompt": "d", "num_inference_steps": 2, "width": 96}).get_json()
        for _ in range(3)
    ]
    static_jobs = [
        client.post("/v1/jobs", json={"prompt": "s", "model": "tiny-static", "num_inference_steps": 2}).get_json()
        for _ in range(3)
    ]
    deadline = time.monotonic() + 60

    def final(job_id: str) -> dict[str, Any]:
        while time.monotonic() < deadline:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").get_json()
            if job["status"] in ("succeeded", "failed"):
                return job
            time.sleep(0.05)
        raise AssertionError(job_id)

    for job in dynamic_jobs:
        done = final(job["id"])
        assert done["status"] == "succeeded" and done["worker"] == "dyn"
        assert [(o["width"], o["height"]) for o in done["outputs"]] == [(96, 64)]
    for job in static_jobs:
        done = final(job["id"])
        assert done["status"] == "succeeded" and done["worker"] == "static"
        assert [(o["width"], o["height"]) for o in done["outputs"]] == [(64, 64), (64, 64)]
