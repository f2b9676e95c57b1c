"""Flower (``celery flower``) against our broker, as docs/operations.md ("Flower") describes it:
a worker started with ``DQ_CELERY_EVENTS=1`` is listed with its queue and task, and the tasks
Flower records are wake-up tokens (``dq.work(model)``), never jobs; a worker with the default
settings (no events, no remote control) is invisible to it."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from dq.procs import free_port, wait_until
from jobs.settings import Settings
from tests.conftest import Children, WorkerFactory, http_status
from tests.helpers import submit, wait_for

EMULATED = {"DQ_BACKEND": "emulated", "DQ_EMULATED_SECONDS": "0.05"}


def flower_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def flower(settings: Settings, session_dir: Path) -> Iterator[str]:
    """Flower on a free port against the test Redis; its base URL. Its HTTP API answers without
    a login only with FLOWER_UNAUTHENTICATED_API set (fine on 127.0.0.1 in a test)."""
    children = Children(session_dir, grace_s=5)
    port = free_port()
    command = [sys.executable, "-m", "celery", "--broker", settings.redis_url, "flower"]
    command += [f"--port={port}", "--address=127.0.0.1"]
    proc = children.start("flower", command, {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"})
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_status(f"{url}/healthcheck") == 200, 60, "flower", proc)
    yield url
    children.stop_all()


def test_flower_lists_an_observed_worker_and_its_token_tasks(
    client: FlaskClient, start_worker: WorkerFactory, flower: str
) -> None:
    start_worker("tiny-static", name="unobserved", **EMULATED)  # the defaults: Flower cannot see it
    start_worker("tiny-sd", name="observed", DQ_CELERY_EVENTS="1", **EMULATED)

    workers: dict[str, Any] = {}

    def listed() -> bool:
        workers.update(flower_get(f"{flower}/api/workers?refresh=1"))
        return {"registered", "active_queues"} <= workers.get("celery@observed", {}).keys()

    wait_until(listed, 30, "the observed worker in Flower")
    assert not [name for name in workers if "unobserved" in name]
    seen = workers["celery@observed"]
    assert seen["registered"] == ["dq.work"]
    assert [q["name"] for q in seen["active_queues"]] == ["gen.tiny-sd"]

    jobs = [submit(client, num_inference_steps=2) for _ in range(3)]
    assert all(wait_for(client, job["id"])["status"] == "succeeded" for job in jobs)
    tasks: dict[str, Any] = {}

    def recorded() -> bool:  # events reach Flower when a token's drain ends (docs/operations.md)
        tasks.update(flower_get(f"{flower}/api/tasks"))
        return any(t["state"] == "SUCCESS" for t in tasks.values())

    wait_until(recorded, 30, "a finished task in Flower")
    assert {(t["name"], t["args"], t["worker"]) for t in tasks.values()} == {
        ("dq.work", "['tiny-sd']", "celery@observed")
    }
    assert len(tasks) <= len(jobs)  # tokens: one task may drain several jobs
    text = json.dumps(tasks)
    assert not [job["id"] for job in jobs if job["id"] in text]  # no job id anywhere in what Flower knows
