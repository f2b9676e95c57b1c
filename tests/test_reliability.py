"""The reliability promises of docs/reliability.md that need real worker processes: a hung
generation is detected and re-run elsewhere, cancel stops within a step by pub/sub alone (and
by the progress write without it), a cancel after the last step is recorded on a success,
a warm shutdown takes nothing new, duplicate messages never run a job twice, and a job past
its timeout is stopped by the worker itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis
from flask.testing import FlaskClient

from dq.procs import Service, stop_process, wait_until
from jobs.keys import Keys, celery_queue
from jobs.settings import Settings
from jobs.transport import work_message
from jobs.workers import WorkerRegistry
from tests.conftest import BUCKET, REPO_ROOT, WorkerFactory, worker_env
from tests.helpers import s3_keys, submit, wait_for, wait_until_job

RECORDING = {"DQ_BACKEND": "tests.support:step_recording_backend"}


def steps_recorded(client: redis.Redis, seed: int) -> list[tuple[int, float]]:
    """(step, time) of every step the recording backend finished for the job with ``seed``."""
    raw: Any = client.lrange(f"test:steps:{seed}", 0, -1)
    return [(int(s), float(t)) for s, t in (item.decode().split() for item in raw)]


def subscribers(client: redis.Redis) -> int:
    """Processes listening for cancel announcements."""
    ((_, count),) = client.pubsub_numsub(Keys().cancel_channel())
    return int(count)


def disconnect_subscribers(client: redis.Redis) -> bool:
    """Kill the cancel listeners' connections; True once none is subscribed."""
    client.client_kill_filter(_type="pubsub")
    return subscribers(client) == 0


# -- a hung worker ---------------------------------------------------------------------------
@pytest.fixture
def launcher(s3_settings: Settings, s3_service: Service, session_dir: Path) -> Iterator[Any]:
    """``dq worker --workers N`` as a subprocess (the launcher restarts children that exit)."""
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(workers: int, **env: str) -> subprocess.Popen[bytes]:
        log = (session_dir / f"launcher-{time.monotonic_ns()}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dq", "worker", "--model", "tiny-sd", "--workers", str(workers)],
            env=worker_env(s3_settings, s3_service, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        stop_process(proc, grace_s=30)
        log.close()


def test_a_hung_generation_is_given_back_and_its_process_replaced(
    client: FlaskClient, redis_client: redis.Redis, launcher: Any, tmp_path: Path
) -> None:
    stall_s, tick_s = 2.0, 0.5
    marker = tmp_path / "hang-once"
    proc = launcher(
        2,
        DQ_BACKEND="tests.support:hanging_backend",
        DQ_EMULATED_SECONDS="0.5",
        DQ_STALL_S=str(stall_s),
        DQ_RECONCILE_INTERVAL_S=str(tick_s),
        DQ_TEST_HANG_MARKER=str(marker),
    )
    registry = WorkerRegistry(redis_client, Keys())
    ready = lambda: [w for w in registry.live() if w.state == "ready"]  # noqa: E731
    wait_until(lambda: len(ready()) == 2, 120, "two workers", proc)
    pids = {w.name: w.pid for w in registry.live()}
    marker.write_text("")
    job = submit(client, prompt="hang at step 2", num_inference_steps=10)

    states: dict[str, set[str]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for w in registry.live():
            states.setdefault(w.name, set()).add(w.state)
        current = client.get(f"/v1/jobs/{job['id']}").get_json()
        if current["status"] == "succeeded":
            break
        time.sleep(0.02)
    final = wait_for(client, job["id"])
    hung_at = float(marker.with_suffix(".hung").read_text())
    hung_worker = next(name for name, seen in states.items() if "stalled" in seen)
    assert final["status"] == "succeeded" and final["attempts"] == 2
    assert final["worker"] != hung_worker  # re-ran elsewhere
    finished_after = datetime_s(final["completed_at"]) - hung_at
    print(f"\nstalled at step 2; re-run finished {finished_after:.2f} s later (DQ_STALL_S={stall_s})")
    assert finished_after <= stall_s + tick_s + final["metrics"]["generation_seconds"] + 1.5
    # the stuck process was replaced: same name, a new pid, ready again
    wait_until(
        lambda: any(
            w.name == hung_worker and w.pid != pids[hung_worker] and w.state == "ready" for w in registry.live()
        ),
        60,
        "the replacement of the stalled worker",
        proc,
    )


def datetime_s(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


# -- cancel ------------------------------------------------------------------------------------
def test_cancel_by_pubsub_alone_stops_within_one_step(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis
) -> None:
    # progress is never written (interval 1000 s): only the pub/sub announcement can stop it
    start_worker(**RECORDING, DQ_EMULATED_SECONDS="5", DQ_PROGRESS_INTERVAL_S="1000")
    job = submit(client, num_inference_steps=50, seed=101)  # 0.1 s per step
    wait_until(lambda: len(steps_recorded(redis_client, 101)) >= 5, 30, "five steps")
    assert subscribers(redis_client) == 1
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    canceled_at = time.time()  # accepted (and announced): the step under way may still finish
    final = wait_until_job(client, job["id"], lambda j: j["status"] != "running", timeout_s=30)
    assert final["status"] == "canceled"
    after = [step for step, at in steps_recorded(redis_client, 101) if at > canceled_at]
    print(f"\nsteps finished after the cancel (pub/sub): {len(after)}")
    assert len(after) <= 1 and max(s for s, _ in steps_recorded(redis_client, 101)) < 50


def test_cancel_without_the_subscriber_is_caught_by_the_progress_write(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis
) -> None:
    interval_s = 0.3
    start_worker(**RECORDING, DQ_EMULATED_SECONDS="5", DQ_PROGRESS_INTERVAL_S=str(interval_s))
    job = submit(client, num_inference_steps=50, seed=102)
    wait_until(lambda: len(steps_recorded(redis_client, 102)) >= 5, 30, "five steps")
    wait_until(lambda: disconnect_subscribers(redis_client), 10, "the listener disconnected")
    canceled_at = time.time()  # the listener resubscribes 1 s after it lost its connection
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    final = wait_until_job(client, job["id"], lambda j: j["status"] != "running", timeout_s=30)
    assert final["status"] == "canceled"
    last_step_at = max(at for _, at in steps_recorded(redis_client, 102))
    print(f"\nwithout pub/sub: stopped {last_step_at - canceled_at:.2f} s after the cancel (interval {interval_s} s)")
    assert last_step_at - canceled_at <= interval_s + 0.1 + 0.5  # one interval, one step, slack for load


def test_a_cancel_after_the_last_step_ends_succeeded_with_the_request_recorded(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis
) -> None:
    start_worker(**RECORDING, DQ_EMULATED_SECONDS="0.2")
    job = submit(client, prompt="slow-decode", num_inference_steps=4, seed=103)
    wait_until(lambda: len(steps_recorded(redis_client, 103)) == 4, 30, "the last step")
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.get_json()["cancel_requested"] is True
    final = wait_for(client, job["id"])
    assert final["status"] == "succeeded" and final["cancel_requested"] is True and len(final["outputs"]) == 1


# -- warm shutdown -------------------------------------------------------------------------------
def test_a_warm_shutdown_finishes_the_running_job_and_takes_nothing_new(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis
) -> None:
    worker = start_worker(**RECORDING, DQ_EMULATED_SECONDS="2")
    running = submit(client, num_inference_steps=20, seed=104)
    waiting = submit(client, num_inference_steps=2, seed=105)
    wait_until(lambda: len(steps_recorded(redis_client, 104)) >= 2, 30, "the first job running")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    assert wait_for(client, running["id"])["status"] == "succeeded"
    held = client.get(f"/v1/jobs/{waiting['id']}").get_json()
    assert (held["status"], held["attempts"], held["queue_position"]) == ("queued", 0, 0)
    start_worker(**RECORDING, DQ_EMULATED_SECONDS="0.1")
    done = wait_for(client, waiting["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1


# -- duplicated and lost messages --------------------------------------------------------------
def test_duplicate_tokens_never_run_a_job_twice(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis, s3_service: Service
) -> None:
    """Celery messages carry wake-up tokens, not jobs: a duplicate (kombu restoring an unacked
    one, an operator's replay) only makes a worker look for work; a job runs once because only
    the scheduler's pick hands it out."""
    start_worker(**RECORDING, DQ_EMULATED_SECONDS="1")
    running = submit(client, num_inference_steps=10, seed=106)
    wait_until(lambda: len(steps_recorded(redis_client, 106)) >= 2, 30, "the job running")
    for _ in range(3):  # while it runs
        redis_client.lpush(celery_queue("tiny-sd"), work_message("tiny-sd"))
    finished = wait_for(client, running["id"])
    for _ in range(3):  # once it is done
        redis_client.lpush(celery_queue("tiny-sd"), work_message("tiny-sd"))
    after = submit(client, num_inference_steps=2, seed=107)
    assert wait_for(client, after["id"])["status"] == "succeeded"
    wait_until(lambda: redis_client.llen(celery_queue("tiny-sd")) == 0, 30, "every token taken and acknowledged")
    again = client.get(f"/v1/jobs/{running['id']}").get_json()
    assert finished["status"] == again["status"] == "succeeded"
    assert again["attempts"] == 1 and again["completed_at"] == finished["completed_at"]
    assert [s for s, _ in steps_recorded(redis_client, 106)] == list(range(1, 11))  # generated once
    assert s3_keys(s3_service, BUCKET, f"outputs/tiny-sd/{running['id']}/") == [
        f"outputs/tiny-sd/{running['id']}/0.png"
    ]


def test_a_lost_token_is_restored_by_the_reconciler(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis
) -> None:
    job = submit(client, num_inference_steps=2, seed=109)
    redis_client.delete(celery_queue("tiny-sd"))  # the message is lost: no worker will be woken by it
    started = time.monotonic()
    start_worker(**RECORDING, DQ_EMULATED_SECONDS="0.1", DQ_RECONCILE_INTERVAL_S="0.5")
    final = wait_for(client, job["id"], timeout_s=60)
    assert final["status"] == "succeeded" and final["attempts"] == 1
    print(f"\nlost token: the job ran {time.monotonic() - started:.1f} s after a worker started (reconcile 0.5 s)")


# -- timeouts ------------------------------------------------------------------------------------
def test_the_worker_itself_stops_a_job_past_its_timeout(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis
) -> None:
    lease_s = 30  # the reconciler would fail it only after timeout + one lease
    start_worker(**RECORDING, DQ_EMULATED_SECONDS="20", DQ_LEASE_S=str(lease_s))
    job = submit(client, num_inference_steps=100, seed=108, timeout_seconds=1)
    final = wait_for(client, job["id"], timeout_s=30)
    assert final["status"] == "failed" and final["error"]["type"] == "timeout"
    ran = datetime_s(final["completed_at"]) - datetime_s(final["started_at"])
    assert 1 <= ran < 1 + lease_s  # the worker, not the reconciler
    assert max(s for s, _ in steps_recorded(redis_client, 108)) < 100
    print(f"\ntimeout_seconds=1: failed by the worker after {ran:.2f} s")
    assert json.dumps(final["error"]).count("timeout_seconds=1") == 1
