"""The whole job path with real processes: redis-server, SeaweedFS, a Celery worker process
running the tiny pipeline, and the Flask app."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pytest
import urllib3
from flask.testing import FlaskClient
from PIL import Image

from tests.conftest import WorkerFactory
from tests.helpers import submit, wait_for

HTTP = urllib3.PoolManager(retries=False)
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def download(url: str) -> bytes:
    reply = HTTP.request("GET", url)
    assert reply.status == 200
    return bytes(reply.data)


@pytest.mark.parametrize(("fmt", "width", "height"), [("png", 64, 64), ("jpeg", 96, 64), ("webp", 64, 80)])
def test_submit_poll_download(
    client: FlaskClient, start_worker: WorkerFactory, fmt: str, width: int, height: int
) -> None:
    start_worker()
    job = wait_for(client, submit(client, output_format=fmt, width=width, height=height, num_inference_steps=3)["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"step": 3, "total": 3} and job["attempts"] == 1
    assert job["worker"].startswith("w0.tiny-sd")
    (output,) = job["outputs"]
    assert output["content_type"] == f"image/{fmt}" and (output["width"], output["height"]) == (width, height)
    assert output["key"].endswith(f"/{job['id']}/0.{'jpg' if fmt == 'jpeg' else fmt}")
    body = download(output["url"])
    assert hashlib.sha256(body).hexdigest() == output["sha256"] and len(body) == output["bytes"]
    image = Image.open(io.BytesIO(body))
    assert image.format == FORMATS[fmt] and image.size == (width, height)
    metrics = job["metrics"]
    assert metrics["generation_seconds"] > 0 and metrics["total_seconds"] >= metrics["generation_seconds"]
    assert metrics["queue_seconds"] >= 0


def test_same_seed_gives_identical_bytes_and_images_have_own_seeds(
    client: FlaskClient, start_worker: WorkerFactory
) -> None:
    start_worker()
    first = wait_for(client, submit(client, seed=1234, num_images=2, num_inference_steps=3)["id"])
    second = wait_for(client, submit(client, seed=1234, num_images=2, num_inference_steps=3)["id"])
    other = wait_for(client, submit(client, seed=1235, num_inference_steps=3)["id"])
    assert [o["seed"] for o in first["outputs"]] == [1234, 1235]
    a = [download(o["url"]) for o in first["outputs"]]
    b = [download(o["url"]) for o in second["outputs"]]
    assert a == b and a[0] != a[1]
    # image 1 of the seed-1234 job was generated from seed 1235: the same image on its own, up
    # to float rounding (a batch of 2 and a batch of 1 may take different CPU kernels)
    alone = np.asarray(Image.open(io.BytesIO(download(other["outputs"][0]["url"]))), dtype=np.int16)
    in_batch = np.asarray(Image.open(io.BytesIO(a[1])), dtype=np.int16)
    assert np.abs(alone - in_batch).max() <= 2


def test_pipeline_that_raises_fails_the_job_with_its_message(client: FlaskClient, start_worker: WorkerFactory) -> None:
    start_worker(model="tiny-broken", DQ_BACKEND="tests.support:raising_backend")
    failed = wait_for(client, submit(client, model="tiny-broken", prompt="please explode", num_inference_steps=4)["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {"type": "generation_error", "message": "RuntimeError: the UNet exploded at step 2"}
    assert failed["outputs"] == [] and failed["completed_at"] is not None
    # the same worker goes on with the next job
    ok = wait_for(client, submit(client, model="tiny-broken", num_inference_steps=2)["id"])
    assert ok["status"] == "succeeded"


def test_static_model_runs_its_compiled_batch(client: FlaskClient, start_worker: WorkerFactory) -> None:
    start_worker(model="tiny-static")
    job = wait_for(client, submit(client, model="tiny-static", num_inference_steps=2)["id"])
    assert job["status"] == "succeeded" and len(job["outputs"]) == 2
    assert job["worker"].startswith("w0.tiny-static")


def test_queue_position_of_a_backlog_counts_down(client: FlaskClient, start_worker: WorkerFactory) -> None:
    ids = [submit(client, num_inference_steps=25, seed=i)["id"] for i in range(6)]
    last = ids[-1]
    assert client.get(f"/v1/jobs/{last}").get_json()["queue_position"] == 5
    start_worker()
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{last}").get_json()
        if job["status"] != "queued":
            break
        if not seen or seen[-1] != job["queue_position"]:
            seen.append(job["queue_position"])
        time.sleep(0.01)
    assert seen[0] >= 3 and seen == sorted(seen, reverse=True) and len(seen) >= 3, seen
    assert wait_for(client, last)["status"] == "succeeded"


def test_models_and_workers_show_the_ready_worker(client: FlaskClient, start_worker: WorkerFactory) -> None:
    start_worker(name="w-visible.tiny-sd")
    workers = client.get("/v1/workers").get_json()["data"]
    (me,) = [w for w in workers if w["name"] == "w-visible.tiny-sd"]
    assert me["state"] == "ready" and me["model"] == "tiny-sd" and me["pid"] > 0
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["data"]}
    assert models["tiny-sd"]["workers"]["ready"] == 1
