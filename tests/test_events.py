"""No polling needed: the SSE stream of a job's events (replayed, live, resumed), long polls
with ``?wait=N``, and ``Prefer: wait`` on submit — against a real worker and Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import WorkerFactory
from tests.helpers import submit, wait_for


def read_stream(client: FlaskClient, path: str, **headers: str) -> list[dict[str, Any]]:
    """Every SSE message of a stream (until the server ends it): id, event, data (parsed)."""
    response = client.get(path, headers=headers, buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    text = b"".join(response.response).decode()  # type: ignore[arg-type]
    messages = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            messages.append({"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])})
    return messages


def test_a_finished_jobs_stream_replays_its_history_and_ends(client: FlaskClient, start_worker: WorkerFactory) -> None:
    start_worker(DQ_PROGRESS_INTERVAL_S="0", DQ_PROGRESS_EVENT_INTERVAL_S="0")
    job = submit(client, num_inference_steps=4)
    final = wait_for(client, job["id"])
    messages = read_stream(client, f"/v1/jobs/{job['id']}/events")
    types = [m["event"] for m in messages]
    assert types == ["job.started", "job.progress", "job.progress", "job.progress", "job.succeeded"]
    assert [m["id"] for m in messages] == [f"msg_{job['id']}_{n}" for n in range(1, 6)]  # = the webhook-ids
    assert all(m["data"]["type"] == m["event"] and m["data"]["timestamp"].endswith("Z") for m in messages)
    assert [m["data"]["data"]["progress"]["step"] for m in messages[1:4]] == [1, 2, 3]
    last = messages[-1]["data"]["data"]
    strip = lambda j: {**j, "outputs": [{**o, "url": None} for o in j["outputs"]]}  # noqa: E731
    assert strip(last) == strip(final)  # the terminal event carries the job as GET shows it
    resumed = read_stream(client, f"/v1/jobs/{job['id']}/events", **{"Last-Event-ID": f"msg_{job['id']}_3"})
    assert [m["id"] for m in resumed] == [f"msg_{job['id']}_{n}" for n in (4, 5)]  # nothing lost, nothing twice


def test_a_live_stream_follows_the_job_to_its_end(client: FlaskClient, start_worker: WorkerFactory) -> None:
    job = submit(client, num_inference_steps=20)  # queued: no worker yet
    got: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: got.extend(read_stream(client, f"/v1/jobs/{job['id']}/events")))
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive() and got == []  # waiting: nothing has happened yet
    start_worker(DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="1", DQ_PROGRESS_EVENT_INTERVAL_S="0.2")
    reader.join(30)
    assert not reader.is_alive()
    types = [m["event"] for m in got]
    assert types[0] == "job.started" and types[-1] == "job.succeeded" and "job.progress" in types
    assert [m["id"] for m in got] == [f"msg_{job['id']}_{n}" for n in range(1, len(got) + 1)]


def test_long_poll_answers_when_the_job_ends_or_the_wait_runs_out(
    client: FlaskClient, start_worker: WorkerFactory
) -> None:
    job = submit(client, num_inference_steps=2)
    started = time.monotonic()
    held = client.get(f"/v1/jobs/{job['id']}?wait=1").get_json()
    assert held["status"] == "queued" and 0.9 <= time.monotonic() - started < 5
    for bad in ("61", "-1", "soon"):
        assert client.get(f"/v1/jobs/{job['id']}?wait={bad}").status_code == 422
    start_worker(DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0.5")
    started = time.monotonic()
    done = client.get(f"/v1/jobs/{job['id']}?wait=30").get_json()
    assert done["status"] == "succeeded" and time.monotonic() - started < 10


def test_prefer_wait_answers_200_with_the_finished_job_or_202(client: FlaskClient, start_worker: WorkerFactory) -> None:
    body = {"prompt": "a pig", "num_inference_steps": 2}
    early = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=1"})
    assert early.status_code == 202 and early.get_json()["status"] == "queued"  # no worker: not in time
    assert early.headers["Preference-Applied"] == "wait=1"
    start_worker(DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0.3")
    wait_for(client, early.get_json()["id"])
    synced = client.post("/v1/jobs", json=body, headers={"Prefer": "respond-async, wait=30"})
    assert synced.status_code == 200 and synced.get_json()["status"] == "succeeded"
    assert synced.get_json()["outputs"][0]["url"]
    assert client.post("/v1/jobs", json=body, headers={"Prefer": "wait=later"}).status_code == 202  # a hint


def test_another_tenants_stream_is_not_found(
    client: FlaskClient, tenant_client: Callable[..., FlaskClient]
) -> None:
    job = submit(tenant_client("acme"), num_inference_steps=2)
    other = tenant_client("globex")
    assert other.get(f"/v1/jobs/{job['id']}/events").status_code == 404
    assert other.get(f"/v1/jobs/{job['id']}?wait=1").status_code == 404
