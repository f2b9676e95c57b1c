"""Cancel: queued jobs never run, running jobs stop at the next denoising step and upload
nothing, finished jobs answer 409, canceled ones 200 (idempotent)."""

from __future__ import annotations

from flask.testing import FlaskClient

from dq.procs import Service
from tests.conftest import BUCKET, WorkerFactory
from tests.helpers import s3_keys, submit, wait_until_job


def test_cancel_queued_job_never_runs(client: FlaskClient, start_worker: WorkerFactory) -> None:
    doomed = submit(client, num_inference_steps=2)
    after = submit(client, num_inference_steps=2)
    response = client.post(f"/v1/jobs/{doomed['id']}/cancel")
    assert response.status_code == 200
    canceled = response.get_json()
    assert canceled["status"] == "canceled" and canceled["completed_at"] is not None
    assert canceled["queue_position"] is None
    assert client.get(f"/v1/jobs/{after['id']}").get_json()["queue_position"] == 0
    start_worker()
    done = wait_until_job(client, after["id"], lambda j: j["status"] == "succeeded")
    assert done["attempts"] == 1
    final = client.get(f"/v1/jobs/{doomed['id']}").get_json()
    assert final["status"] == "canceled" and final["attempts"] == 0 and final["worker"] is None
    assert final["started_at"] is None and final["outputs"] == []


def test_cancel_running_job_stops_at_the_next_step(
    client: FlaskClient, start_worker: WorkerFactory, s3_service: Service
) -> None:
    start_worker()
    long_job = submit(client, num_inference_steps=150)  # ~3 s on the tiny model
    follower = submit(client, num_inference_steps=2)
    wait_until_job(client, long_job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 2)
    response = client.post(f"/v1/jobs/{long_job['id']}/cancel")
    assert response.status_code == 202
    assert response.get_json()["cancel_requested"] is True
    final = wait_until_job(client, long_job["id"], lambda j: j["status"] != "running", timeout_s=30)
    assert final["status"] == "canceled"
    assert final["progress"]["step"] < final["progress"]["total"] == 150
    assert final["outputs"] == [] and s3_keys(s3_service, BUCKET, f"outputs/tiny-sd/{long_job['id']}/") == []
    # the worker takes its next job
    assert wait_until_job(client, follower["id"], lambda j: j["status"] == "succeeded")["attempts"] == 1
    # idempotent
    again = client.post(f"/v1/jobs/{long_job['id']}/cancel")
    assert again.status_code == 200 and again.get_json()["status"] == "canceled"


def test_cancel_after_completion_is_a_conflict(client: FlaskClient, start_worker: WorkerFactory) -> None:
    start_worker()
    job = submit(client, num_inference_steps=2)
    wait_until_job(client, job["id"], lambda j: j["status"] == "succeeded")
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409 and response.mimetype == "application/problem+json"
    assert "succeeded" in response.get_json()["detail"]
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "succeeded"


def test_cancel_unknown_job_is_404(client: FlaskClient) -> None:
    response = client.post("/v1/jobs/nope/cancel")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"
