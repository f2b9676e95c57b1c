"""The worker's whole job path with ``DQ_BACKEND=neuron``: a real worker process loads an emulated
Neuron artifact through optimum-neuron's pipeline class (the Neuron SDK stood in for by
``tests/neuron_sdk`` on that process's ``PYTHONPATH``), claims jobs, generates, uploads to S3
and commits; cancel and progress go through the same runner as on inf2."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import urllib3
from flask.testing import FlaskClient
from PIL import Image

from dq.procs import Service
from tests.conftest import BUCKET, WorkerFactory
from tests.helpers import s3_keys, submit, wait_for, wait_until_job
from tests.neuron_fixtures import emulated_models, neuron_worker_env  # noqa: F401

HTTP = urllib3.PoolManager(retries=False)


def test_the_job_path_with_the_neuron_backend(
    emulated_models: dict[str, Path],  # noqa: F811  (built before the app reads the models directory)
    client: FlaskClient,
    start_worker: WorkerFactory,
    s3_service: Service,
) -> None:
    # Progress is written at every step (not every 0.25 s) so that each value can be watched.
    name = "w-neuron.tiny-neuron"
    start_worker(model="tiny-neuron", name=name, DQ_PROGRESS_INTERVAL_S="0", **neuron_worker_env())
    (worker,) = [w for w in client.get("/v1/workers").get_json()["data"] if w["name"] == name]
    assert worker["backend"] == "neuron" and worker["state"] == "ready"

    # 1. claim -> generate -> S3 -> succeeded
    job = wait_for(client, submit(client, model="tiny-neuron", num_inference_steps=3, seed=9)["id"])
    assert job["status"] == "succeeded", job
    assert job["worker"] == name and job["attempts"] == 1
    assert job["progress"] == {"step": 3, "total": 3}
    (output,) = job["outputs"]
    reply = HTTP.request("GET", output["url"])
    assert reply.status == 200 and hashlib.sha256(reply.data).hexdigest() == output["sha256"]
    assert Image.open(io.BytesIO(reply.data)).size == (64, 64) == (output["width"], output["height"])
    assert output["seed"] == 9

    # 2. Heun calls back 2 x steps - 1 times; progress still counts requested steps, never past
    # the total, and the last step is written only by the commit.
    job_id = submit(client, model="tiny-neuron", num_inference_steps=12, scheduler="heun")["id"]
    seen = watch_progress(client, job_id)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded", job
    assert job["input"]["scheduler"] == "heun" and job["progress"] == {"step": 12, "total": 12}
    assert seen == sorted(seen) and max(seen) < 12

    # 3. cancel stops the run at the next step; nothing is uploaded
    job = submit(client, model="tiny-neuron", num_inference_steps=150)
    wait_until_job(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 2)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    final = wait_until_job(client, job["id"], lambda j: j["status"] != "running", timeout_s=30)
    assert final["status"] == "canceled" and final["progress"]["step"] < 150
    assert final["outputs"] == [] and s3_keys(s3_service, BUCKET, f"outputs/tiny-neuron/{job['id']}/") == []


def watch_progress(client: FlaskClient, job_id: str, timeout_s: float = 60) -> list[int]:
    """Every progress step seen while the job is queued or running."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").get_json()
        if job["status"] not in ("queued", "running"):
            return seen
        seen.append(job["progress"]["step"])
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} still running after {timeout_s}s")
