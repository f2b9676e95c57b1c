"""A live worker never reads as gone or not serving, however starved it is (issue 12, part 8).

Its heartbeat is a key that expires after ``heartbeat_ttl_s`` (≥ 5 beats and ≥ 10 s): a
heartbeat thread that cannot run for seconds — the GIL held by one long C call in the
generating thread, every core taken by other processes — must not make a working worker
vanish from ``/v1/models``, the scaling signal or backpressure's "no worker seen". The test
starves a real worker process both ways while jobs run, watches what every reader sees, and
waits (never a snapshot) for the state it asserts at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis
from flask.testing import FlaskClient

from dq.procs import stop_process, wait_until
from jobs.keys import Keys
from jobs.workers import SERVING_STATES, WorkerRegistry
from tests.conftest import WorkerFactory
from tests.helpers import submit, wait_for

NAME = "starved.tiny-sd"


@pytest.fixture
def cpu_hogs() -> Iterator[None]:
    """Two busy processes per core, for as long as the test runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    yield
    for hog in hogs:
        stop_process(hog, grace_s=1)


class Watcher(threading.Thread):
    """Reads the worker's state as every view does (``WorkerRegistry.live``), again and again."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.registry = WorkerRegistry(client, Keys())
        self.seen: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            states = {w.name: w.state for w in self.registry.live()}
            self.seen.append(states.get(NAME, "absent"))
            self.stopping.wait(0.05)


def test_a_starved_worker_never_reads_as_gone(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis, cpu_hogs: None
) -> None:
    start_worker(
        name=NAME,
        DQ_BACKEND="tests.support:gil_hogging_backend",
        DQ_EMULATED_SECONDS="0.1",
        DQ_HEARTBEAT_S="0.25",  # many beats missed during each hold
        DQ_TEST_GIL_HOG="150000000",  # ~1.5 s with the GIL held, per step, before the load
    )
    watcher = Watcher(redis_client)
    watcher.start()
    try:
        jobs = [submit(client, num_inference_steps=2, seed=i)["id"] for i in range(2)]
        done = [wait_for(client, job_id, timeout_s=300) for job_id in jobs]
    finally:
        watcher.stopping.set()
        watcher.join()
    assert [job["status"] for job in done] == ["succeeded"] * 2
    assert len(watcher.seen) > 20 and "busy" in watcher.seen
    assert set(watcher.seen) <= set(SERVING_STATES), sorted(set(watcher.seen))
    registry = WorkerRegistry(redis_client, Keys())
    wait_until(lambda: {w.name: w.state for w in registry.live()}.get(NAME) == "ready", 30, "ready after the jobs")
