"""Replicate-compatible routes: the mapping functions alone, the routes through the Flask client
(real Redis), and the official ``replicate`` Python client (1.0.x, from PyPI) against a live
stack — gunicorn, a real worker, redis-server and SeaweedFS — with ``base_url`` pointed at it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import replicate
from flask.testing import FlaskClient
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput
from replicate.run import _has_output_iterator_array_type

from dq.procs import Service
from jobs.capabilities import read_model
from jobs.errors import FieldError, ValidationFailed
from jobs.models import JobStatus
from jobs.replicate import (
    Addressing,
    ModelPredictionRequest,
    ModelVersion,
    Prediction,
    artifact_version,
    as_prediction_error,
    job_body,
    our_events,
    output_signature,
    parse_model_ref,
    prediction_stream_events,
    progress_logs,
    render_prediction,
    render_prediction_event,
    render_version,
    their_events,
    valid_output_signature,
)
from jobs.settings import Settings
from jobs.store import JobRecord
from jobs.tenants import KeyStore
from tests.conftest import WorkerFactory, keyed_client, serve_api
from tests.helpers import submit, wait_for
from tests.webhook_receiver import SECRET, Receiver
from webhooks.deliver import Deliverer, DeliveryConfig, render_body

AT = Addressing("http://api.test", "dq/tiny-sd", "ab" * 32)
EMULATED = {"DQ_BACKEND": "emulated", "DQ_EMULATED_SECONDS": "0.3"}


def record(status: JobStatus = JobStatus.QUEUED, **fields: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": "0" * 31 + "1",
        "status": status,
        "model": "tiny-sd",
        "input": {"prompt": "a pig", "num_inference_steps": 20},
        "seq": 1,
        "created_at": 1_700_000_000.0,
    }
    return JobRecord(**{**values, **fields})


# -- the mapping, alone ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (JobStatus.QUEUED, "starting"),
        (JobStatus.RUNNING, "processing"),
        (JobStatus.SUCCEEDED, "succeeded"),
        (JobStatus.FAILED, "failed"),
        (JobStatus.CANCELED, "canceled"),
    ],
)
def test_each_job_status_reads_as_a_prediction_status(status: JobStatus, expected: str) -> None:
    assert render_prediction(record(status), AT)["status"] == expected


def test_a_prefer_wait_that_runs_out_answers_starting_even_while_it_runs() -> None:
    running = record(JobStatus.RUNNING, started_at=1_700_000_001.0, progress_step=3, progress_total=20)
    assert render_prediction(running, AT, pending_as_starting=True)["status"] == "starting"
    done = record(JobStatus.SUCCEEDED, completed_at=1_700_000_002.0)
    assert render_prediction(done, AT, pending_as_starting=True)["status"] == "succeeded"


def test_a_succeeded_prediction_has_its_output_urls_links_and_metrics() -> None:
    outputs = [{"bucket": "b", "key": f"k{n}", "content_type": "image/png"} for n in range(2)]
    done = record(
        JobStatus.SUCCEEDED,
        outputs=outputs,
        started_at=1_700_000_001.0,
        completed_at=1_700_000_003.5,
        generation_seconds=2.25,
        progress_step=20,
        progress_total=20,
    )
    prediction = render_prediction(done, AT)
    link = f"http://api.test/v1/predictions/{done.id}"
    assert prediction["output"] == [f"{link}/output/0", f"{link}/output/1"]
    assert prediction["urls"] == {"get": link, "cancel": f"{link}/cancel", "stream": f"{link}/stream"}
    assert prediction["metrics"] == {"predict_time": 2.25, "total_time": 3.5}
    assert prediction["created_at"] == "2023-11-14T22:13:20.000Z"
    assert prediction["completed_at"] == "2023-11-14T22:13:23.500Z"
    assert (prediction["model"], prediction["version"], prediction["error"]) == ("dq/tiny-sd", "ab" * 32, None)
    Prediction.model_validate(prediction)  # the documented shape
    assert replicate.prediction.Prediction(**prediction).status == "succeeded"  # the client's own model


def test_not_yet_done_a_prediction_has_no_output_and_no_metrics() -> None:
    prediction = render_prediction(record(), AT)
    assert (prediction["output"], prediction["metrics"], prediction["logs"]) == (None, {}, "")
    assert prediction["started_at"] is None and prediction["completed_at"] is None


def test_an_expired_job_fails_with_an_error_that_says_so() -> None:
    expired = record(JobStatus.FAILED, error={"type": "expired", "message": "queued longer than ttl_seconds (60)"})
    prediction = render_prediction(expired, AT)
    assert prediction["status"] == "failed"
    assert prediction["error"] == "expired: queued longer than ttl_seconds (60)"


def test_output_urls_are_signed_for_one_job_and_image() -> None:
    done = record(JobStatus.SUCCEEDED, outputs=[{"bucket": "b", "key": "k"}] * 2)
    signed = render_prediction(done, AT, output_secret="s1")["output"]
    assert signed[0] == f"http://api.test/v1/predictions/{done.id}/output/0?sig={output_signature('s1', done.id, 0)}"
    sig = signed[1].rpartition("=")[2]
    assert valid_output_signature(["s1"], done.id, 1, sig)
    assert valid_output_signature(["s2", "s1"], done.id, 1, sig)  # the previous secret, in a rotation window
    assert not valid_output_signature(["s2"], done.id, 1, sig)  # rotated out: revoked
    assert not valid_output_signature(["s1"], done.id, 0, sig) and not valid_output_signature(["s1"], "0" * 32, 1, sig)


def test_logs_are_a_progress_line_the_client_parses() -> None:
    assert progress_logs(0, 20) == ""
    logs = progress_logs(7, 20)
    progress = replicate.prediction.Prediction.Progress.parse(logs)
    assert progress is not None and (progress.percentage, progress.current, progress.total) == (0.35, 7, 20)


def test_webhook_event_filters_map_onto_ours_and_back() -> None:
    assert our_events(["start"]) == ["started"]
    assert our_events(["logs"]) == ["progress"]
    assert our_events(["output"]) == ["succeeded"]
    assert our_events(["completed", "start"]) == ["started", "succeeded", "failed", "canceled"]
    assert our_events(None) is None
    assert their_events(our_events(["start", "completed"])) == ["start", "completed"]
    assert their_events(our_events(["output", "completed"])) == ["completed"]  # output is part of completed here
    assert their_events(our_events(["output", "logs"])) == ["output", "logs"]
    assert their_events(None) == ["start", "completed"]  # our default: Replicate's start, output, completed


def test_model_references_are_split_into_owner_name_and_version() -> None:
    assert parse_model_ref("dq/tiny-sd") == ("dq", "tiny-sd", None)
    assert parse_model_ref("dq/tiny-sd:abc") == ("dq", "tiny-sd", "abc")
    assert parse_model_ref("abc") == ("", "", "abc")


def test_a_prediction_request_becomes_a_job_body() -> None:
    request = ModelPredictionRequest.model_validate(
        {
            "input": {"prompt": "a pig", "num_outputs": 2, "seed": 7},
            "webhook": "https://example.com/hook",
            "webhook_events_filter": ["completed"],
        }
    )
    assert job_body(request, "tiny-sd") == {
        "prompt": "a pig",
        "num_images": 2,
        "seed": 7,
        "model": "tiny-sd",
        "webhook": "https://example.com/hook",
        "webhook_events_filter": ["succeeded", "failed", "canceled"],
    }


def test_a_jobs_validation_errors_are_named_as_the_prediction_names_them() -> None:
    error = ValidationFailed(
        "no", [FieldError("num_images", "x"), FieldError("width", "y"), FieldError("webhook", "z")]
    )
    assert [e.field for e in as_prediction_error(error).errors] == ["input.num_outputs", "input.width", "webhook"]


def test_a_versions_schema_lists_a_static_models_shapes_as_enums(models_dir: Path) -> None:
    static = read_model(models_dir / "tiny-static")
    schema = render_version(static, "f" * 64, 1_700_000_000.0)["openapi_schema"]
    props = schema["components"]["schemas"]["Input"]["properties"]
    assert props["width"] == {"type": "integer", "enum": [64], "default": 64, "x-order": 2}
    assert props["height"]["enum"] == [64] and props["num_outputs"]["enum"] == [2]
    assert "num_images" not in props and schema["components"]["schemas"]["Input"]["required"] == ["prompt"]
    assert schema["components"]["schemas"]["Output"]["type"] == "array"
    dynamic = read_model(models_dir / "tiny-sd")
    dynamic_props = render_version(dynamic, "f" * 64, 0)["openapi_schema"]["components"]["schemas"]["Input"]
    assert (
        dynamic_props["properties"]["width"]["multipleOf"] == 8 and "enum" not in dynamic_props["properties"]["width"]
    )
    ModelVersion.model_validate(render_version(static, "f" * 64, 0))


def test_a_version_id_is_the_artifacts_content_hash(tmp_path: Path, models_dir: Path) -> None:
    copy = tmp_path / "tiny-sd"
    shutil.copytree(models_dir / "tiny-sd", copy)
    first, _ = artifact_version(copy)
    assert len(first) == 64 and artifact_version(copy)[0] == first == artifact_version(models_dir / "tiny-sd")[0]
    assert artifact_version(models_dir / "tiny-broken")[0] != first  # the same files under another name
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("{", '{"x": 1,', 1))
    assert artifact_version(copy)[0] != first  # recompiled: another version


def test_the_stream_speaks_replicates_events() -> None:
    def event(kind: str, job: JobRecord) -> dict[str, Any]:
        snapshot = {
            "id": job.id,
            "status": job.status.value,
            "model": job.model,
            "input": json.dumps(job.input),
            "created_at": "1700000000",
            "progress_step": str(job.progress_step),
            "progress_total": "20",
            "outputs": json.dumps(job.outputs),
            "error": json.dumps(job.error) if job.error else "",
        }
        return {"type": f"job.{kind}", "timestamp": 1_700_000_001, "job": snapshot}

    assert prediction_stream_events(event("started", record(JobStatus.RUNNING)), AT) == []
    step = prediction_stream_events(event("progress", record(JobStatus.RUNNING, progress_step=5)), AT)
    assert step == [("logs", " 25%|██        | 5/20")]
    done = record(JobStatus.SUCCEEDED, outputs=[{"bucket": "b", "key": "k"}])
    assert prediction_stream_events(event("succeeded", done), AT) == [
        ("output", f"http://api.test/v1/predictions/{done.id}/output/0"),
        ("done", "{}"),
    ]
    failed = record(JobStatus.FAILED, error={"type": "timeout", "message": "ran too long"})
    assert prediction_stream_events(event("failed", failed), AT) == [
        ("error", "timeout: ran too long"),
        ("done", '{"reason":"error"}'),
    ]
    assert prediction_stream_events(event("canceled", record(JobStatus.CANCELED)), AT) == [
        ("done", '{"reason":"canceled"}')
    ]


def test_only_jobs_made_as_predictions_get_prediction_webhooks() -> None:
    snapshot = {"id": "0" * 32, "status": "running", "model": "tiny-sd", "input": "{}", "created_at": "1700000000"}
    plain = {"type": "job.started", "timestamp": 1_700_000_001, "job": snapshot}
    assert render_prediction_event(plain) is None
    assert json.loads(render_body(plain, None))["type"] == "job.started"  # our own event body
    made = {**plain, "job": {**snapshot, "replicate": json.dumps(AT.as_dict())}}
    body = json.loads(render_body(made, None))
    assert body["status"] == "processing" and body["urls"]["get"].startswith("http://api.test/v1/predictions/")


# -- the routes, through the Flask client ----------------------------------------------
def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    return body


def test_models_and_versions_are_addressed_as_owner_slash_name(client: FlaskClient) -> None:
    model = client.get("/v1/models/dq/tiny-static").get_json()
    version = model["latest_version"]
    assert (model["owner"], model["name"], model["visibility"]) == ("dq", "tiny-static", "private")
    assert len(version["id"]) == 64
    versions = client.get("/v1/models/dq/tiny-static/versions").get_json()
    assert versions == {"previous": None, "next": None, "results": [version]}
    assert client.get(f"/v1/models/dq/tiny-static/versions/{version['id']}").get_json() == version
    assert version["openapi_schema"]["components"]["schemas"]["Input"]["properties"]["num_outputs"]["enum"] == [2]
    problem(client.get("/v1/models/someone/tiny-sd"), 404)  # wrong owner
    problem(client.get("/v1/models/dq/no-such-model"), 404)
    problem(client.get("/v1/models/dq/tiny-sd/versions/" + "0" * 64), 404)
    assert client.get("/v1/models").status_code == 200  # our own model routes still answer
    assert client.post("/v1/models/tiny-sd/pause").get_json()["paused"] is True
    assert client.post("/v1/models/tiny-sd/resume").get_json()["paused"] is False


def test_bad_predictions_are_problems_naming_the_field(client: FlaskClient) -> None:
    version = client.get("/v1/models/dq/tiny-static").get_json()["latest_version"]["id"]
    create = "/v1/models/dq/tiny-static/predictions"
    unknown = problem(client.post(create, json={"input": {"prompt": "a pig", "steps": 4}}), 422)
    assert unknown["errors"] == [{"field": "input.steps", "message": "unknown field"}]
    shape = problem(client.post(create, json={"input": {"prompt": "a pig", "width": 128}}), 422)
    assert [e["field"] for e in shape["errors"]] == ["input.width"]
    images = problem(client.post(create, json={"input": {"prompt": "a pig", "num_outputs": 1}}), 422)
    assert [e["field"] for e in images["errors"]] == ["input.num_outputs"]
    problem(client.post(create, json={"input": {}}), 422)
    problem(client.post(create, json={"input": {"prompt": "a"}, "webhook_events_filter": ["later"]}), 422)
    problem(client.post(create, json={"input": {"prompt": "a"}, "webhook": "ftp://x"}), 422)
    problem(client.post("/v1/models/acme/tiny-static/predictions", json={"input": {"prompt": "a"}}), 404)
    problem(client.post("/v1/predictions", json={"version": "0" * 64, "input": {"prompt": "a"}}), 404)
    problem(client.post("/v1/predictions", json={"version": "dq/tiny-static:nope", "input": {"prompt": "a"}}), 404)
    problem(client.post("/v1/predictions", json={"input": {"prompt": "a"}}), 422)
    problem(client.post("/v1/predictions", data="{", content_type="application/json"), 400)
    for ref in (version, f"dq/tiny-static:{version}", "dq/tiny-static"):
        created = client.post("/v1/predictions", json={"version": ref, "input": {"prompt": "a pig"}})
        assert created.status_code == 201 and created.get_json()["version"] == version


def test_a_prediction_is_a_job_and_a_job_is_a_prediction(
    client: FlaskClient, tenant_client: Callable[..., FlaskClient]
) -> None:
    acme = tenant_client("acme")
    made = acme.post("/v1/models/dq/tiny-sd/predictions", json={"input": {"prompt": "a pig", "num_outputs": 2}})
    assert made.status_code == 201 and made.headers["Location"] == f"/v1/predictions/{made.get_json()['id']}"
    prediction = made.get_json()
    assert prediction["status"] == "starting" and prediction["input"]["num_outputs"] == 2  # in Replicate's words
    assert prediction["urls"]["get"] == f"http://localhost/v1/predictions/{prediction['id']}"
    job = acme.get(f"/v1/jobs/{prediction['id']}").get_json()
    assert (job["status"], job["tenant"]) == ("queued", "acme")
    plain = submit(acme, model="tiny-sd")
    assert acme.get(f"/v1/predictions/{plain['id']}").get_json()["status"] == "starting"
    globex = tenant_client("globex")
    problem(globex.get(f"/v1/predictions/{prediction['id']}"), 404)  # another tenant's: as if none
    problem(globex.post(f"/v1/predictions/{prediction['id']}/cancel"), 404)
    problem(globex.get(f"/v1/predictions/{prediction['id']}/output/0"), 404)
    assert globex.get("/v1/predictions").get_json()["results"] == []
    canceled = acme.post(f"/v1/predictions/{prediction['id']}/cancel")
    assert canceled.status_code == 200 and canceled.get_json()["status"] == "canceled"
    problem(acme.get(f"/v1/predictions/{prediction['id']}/output/0"), 404)  # no output: it never ran


def test_predictions_are_listed_newest_first_in_pages(tenant_client: Callable[..., FlaskClient]) -> None:
    acme = tenant_client("acme")
    ids = [submit(acme)["id"] for _ in range(5)]
    seen: list[str] = []
    page = acme.get("/v1/predictions?limit=2").get_json()
    while True:
        assert page["previous"] is None
        seen += [p["id"] for p in page["results"]]
        if page["next"] is None:
            break
        assert page["next"].startswith("http://localhost/v1/predictions?cursor=")
        page = acme.get(page["next"]).get_json()
    assert seen == ids[::-1]
    problem(acme.get("/v1/predictions?limit=0"), 422)


def test_prediction_webhooks_carry_the_prediction(
    s3_settings: Settings, admin_key: str, start_worker: WorkerFactory, receiver: Receiver
) -> None:
    from api import create_app

    settings = s3_settings.with_(webhook_allowlist="127.0.0.1", webhook_secret=SECRET)
    app = create_app(settings)
    client = keyed_client(app, admin_key)
    start_worker(**EMULATED)
    body = {"input": {"prompt": "a pig", "num_inference_steps": 4}, "webhook": receiver.url + "/hook"}
    made = client.post("/v1/models/dq/tiny-sd/predictions", json={**body, "webhook_events_filter": ["completed"]})
    everything = client.post("/v1/models/dq/tiny-sd/predictions", json=body)
    for response in (made, everything):
        assert response.status_code == 201, response.get_data(as_text=True)
        wait_for(client, response.get_json()["id"])
    deliverer = Deliverer.from_settings(settings, DeliveryConfig.from_settings(settings))
    try:
        deliverer.deliver_due()
    finally:
        deliverer.close()

    def delivered_for(prediction_id: str) -> list[dict[str, Any]]:
        return [r.json() for r in receiver.delivered() if r.json()["id"] == prediction_id]

    completed_only = delivered_for(made.get_json()["id"])
    assert [p["status"] for p in completed_only] == ["succeeded"]
    assert completed_only[0]["output"][0].startswith(
        f"http://localhost/v1/predictions/{made.get_json()['id']}/output/0?sig="
    )
    assert completed_only[0]["webhook_events_filter"] == ["completed"]
    keyless = app.test_client()  # what Replicate's JS client and a browser do: no key, the signed URL
    signed = completed_only[0]["output"][0].removeprefix("http://localhost")
    image = keyless.get(signed)
    assert image.status_code == 200 and image.mimetype == "image/png"
    assert image_of(image.data).format == "PNG"
    problem(keyless.get(signed.replace("?sig=", "?sig=0")), 401)
    problem(keyless.get(signed.replace("/output/0?", "/output/1?")), 401)  # signed for image 0 only
    problem(keyless.get(signed.partition("?")[0]), 401)
    assert [p["status"] for p in delivered_for(everything.get_json()["id"])] == ["processing", "succeeded"]
    assert all(item.verified for item in receiver.delivered())  # signed as every webhook is


# -- the official client, against a live stack -----------------------------------------
@pytest.fixture
def stack(
    s3_settings: Settings, s3_service: Service, session_dir: Path, redis_client: redis.Redis
) -> Iterator[tuple[str, str]]:
    """(base URL of the API under gunicorn, a key of tenant acme)."""
    _, key = KeyStore(redis_client).create("acme", label="replicate", rate_limit_per_s=1000, rate_limit_burst=1000)
    with serve_api(s3_settings, s3_service, session_dir / f"replicate-api-{time.monotonic_ns()}.log") as url:
        yield url, key


@pytest.fixture
def rclient(stack: tuple[str, str]) -> Iterator[replicate.Client]:
    """The official client with ``base_url`` pointed at the stack, polling every 50 ms."""
    url, key = stack
    client = replicate.Client(api_token=key, base_url=url)
    client.poll_interval = 0.05
    yield client
    client._client.close()  # the client has no close() of its own


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_stack(
    s3_settings: Settings,
    s3_service: Service,
    session_dir: Path,
    tmp_path: Path,
    redis_client: redis.Redis,
    start_worker: WorkerFactory,
) -> Iterator[tuple[str, str, Path]]:
    """(base URL of the API under gunicorn over https, a key of tenant acme, the certificate to
    trust), with an emulated worker of tiny-sd."""
    tls = self_signed(tmp_path)
    _, key = KeyStore(redis_client).create("acme", label="replicate")
    with serve_api(s3_settings, s3_service, session_dir / f"replicate-tls-{time.monotonic_ns()}.log", tls=tls) as url:
        start_worker(**EMULATED)
        yield url, key, tls[0]


def test_over_https_run_returns_file_outputs_that_download_as_images(tls_stack: tuple[str, str, Path]) -> None:
    url, key, cert = tls_stack
    trusting = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(cert)))
    client = replicate.Client(api_token=key, base_url=url, transport=trusting)
    try:
        output = client.run("dq/tiny-sd", input={"prompt": "a pig", "num_outputs": 2, "output_format": "webp"})
        assert isinstance(output, list) and all(isinstance(item, FileOutput) for item in output)
        assert str(output[0]).startswith(f"{url}/v1/predictions/")
        images = [image_of(item.read()) for item in output]  # the client's own download, with its key
        assert [(i.format, i.size) for i in images] == [("WEBP", (64, 64))] * 2
        assert b"".join(output[1]) == output[1].read()  # streamed in chunks: the same bytes
    finally:
        client._client.close()


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # every byte decodes
    return image


def test_replicate_run_generates_images_the_client_downloads(
    rclient: replicate.Client, stack: tuple[str, str], start_worker: WorkerFactory
) -> None:
    start_worker()  # the real tiny pipeline
    output = rclient.run("dq/tiny-sd", input={"prompt": "a pig", "num_inference_steps": 2, "num_outputs": 2})
    # Over plain http the client hands back the URLs as strings (it wraps https: and data: only);
    # FileOutput is what it wraps them in over https: it reads them with the client's own key.
    assert isinstance(output, list) and len(output) == 2
    assert all(isinstance(item, str) and item.startswith(f"{stack[0]}/v1/predictions/") for item in output)
    images = [image_of(FileOutput(item, rclient).read()) for item in output]
    assert [(i.format, i.size) for i in images] == [("PNG", (64, 64))] * 2
    assert image_of(httpx.get(output[1]).content).format == "PNG"  # no key: the URL is signed
    version = rclient.models.get("dq/tiny-sd").latest_version
    assert version is not None
    for output_format, pil_format in (("jpeg", "JPEG"), ("webp", "WEBP")):
        out = rclient.run(
            f"dq/tiny-sd:{version.id}",  # by version: POST /v1/predictions, then GET the version
            input={"prompt": "a pig", "num_inference_steps": 2, "output_format": output_format},
        )
        assert image_of(FileOutput(out[0], rclient).read()).format == pil_format
    with pytest.raises(ReplicateError) as missing:
        rclient.run("dq/no-such-model", input={"prompt": "a pig"})
    assert missing.value.status == 404
    stranger = replicate.Client(api_token="dq_bad_key", base_url=stack[0])
    try:
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            FileOutput(output[0], stranger).read()  # a bad key is refused, signed URL or not
    finally:
        stranger._client.close()


def test_predictions_create_get_list_cancel_and_wait(rclient: replicate.Client, start_worker: WorkerFactory) -> None:
    queued = rclient.predictions.create(model="dq/tiny-sd", input={"prompt": "a pig", "num_inference_steps": 4})
    assert queued.status == "starting" and queued.output is None
    doomed = rclient.predictions.create(model="dq/tiny-sd", input={"prompt": "a cow", "num_inference_steps": 4})
    doomed.cancel()
    assert doomed.status == "canceled"
    start_worker(**EMULATED)
    queued.wait()
    assert queued.status == "succeeded" and queued.metrics is not None and queued.metrics["predict_time"] > 0
    assert queued.logs == progress_logs(4, 4) and queued.progress is not None and queued.progress.current == 4
    assert queued.output is not None and image_of(FileOutput(queued.output[0], rclient).read()).format == "PNG"
    again = rclient.predictions.get(queued.id)
    assert (again.status, again.output, again.version) == ("succeeded", queued.output, queued.version)
    page = rclient.predictions.list()
    assert [p.id for p in page.results] == [doomed.id, queued.id] and page.next is None
    model = rclient.models.get("dq/tiny-sd")
    assert model.latest_version is not None and model.latest_version.id == queued.version
    assert [v.id for v in model.versions.list()] == [queued.version]
    by_version = rclient.predictions.create(version=queued.version, input={"prompt": "a hen", "num_inference_steps": 2})
    by_version.wait()
    assert by_version.status == "succeeded" and by_version.model == "dq/tiny-sd"
    assert rclient.predictions.cancel(by_version.id).status == "succeeded"  # too late: answered as it is
    events = list(rclient.predictions.get(by_version.id).stream())  # urls.stream: Replicate's SSE
    assert [e.event.value for e in events] == ["output", "done"] and events[0].data == by_version.output[0]


def test_the_async_client(rclient: replicate.Client, start_worker: WorkerFactory) -> None:
    async def scenario() -> None:
        pending = await rclient.models.predictions.async_create(model="dq/tiny-sd", input={"prompt": "a hen"}, wait=1)
        assert pending.status == "starting"  # no worker yet: the wait ran out
        await pending.async_cancel()
        assert pending.status == "canceled"
        await asyncio.to_thread(start_worker, **EMULATED)
        output = await rclient.async_run("dq/tiny-sd", input={"prompt": "a pig", "num_inference_steps": 2})
        assert isinstance(output, list) and image_of(await FileOutput(output[0], rclient).aread()).format == "PNG"
        prediction = await rclient.predictions.async_create(
            model="dq/tiny-sd", input={"prompt": "a cow", "num_inference_steps": 2}
        )
        await prediction.async_wait()
        assert prediction.status == "succeeded"
        assert (await rclient.predictions.async_get(prediction.id)).output == prediction.output
        page = await rclient.predictions.async_list()
        assert [p.status for p in page.results] == ["succeeded", "succeeded", "canceled"]
        await rclient._async_client.aclose()

    asyncio.run(scenario())


def test_the_versions_schema_is_read_by_the_client_as_plain_output(rclient: replicate.Client, models_dir: Path) -> None:
    model = rclient.models.get("dq", "tiny-static")
    assert model.latest_version is not None
    assert model.latest_version.id == artifact_version(models_dir / "tiny-static")[0]
    assert not _has_output_iterator_array_type(model.latest_version)  # a list of URLs, not an iterator


# -- the official JavaScript client (npm), if npm can fetch it here ------------------------
JS_CLIENT = "replicate@1.4.0"
JS_SCRIPT = Path(__file__).with_name("js") / "replicate_client.mjs"


@pytest.fixture(scope="session")
def replicate_js(session_dir: Path) -> Path:
    """The npm package, installed once per session (skipped where node or the registry is missing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the JavaScript client")
    folder = session_dir / "replicate-js"
    folder.mkdir()
    command = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), JS_CLIENT]
    installed = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if installed.returncode != 0:
        pytest.skip(f"npm could not install {JS_CLIENT}: {installed.stderr[-300:]}")
    return folder / "node_modules" / "replicate"


def test_the_javascript_client_runs_predictions_and_downloads_outputs_without_the_key(
    replicate_js: Path, tls_stack: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, key, cert = tls_stack
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)}
    command = ["node", str(JS_SCRIPT), str(replicate_js), url, key, str(tmp_path)]
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    assert seen["run_types"] == ["FileOutput", "FileOutput"]
    assert all(u.startswith(f"{url}/v1/predictions/") and "?sig=" in u for u in seen["run_urls"])
    assert [image_of(Path(f).read_bytes()).format for f in seen["run_files"]] == ["PNG", "PNG"]
    assert [image_of(Path(f).read_bytes()).format for f in seen["version_files"]] == ["WEBP"]
    assert "num_outputs" in seen["version_inputs"] and "prompt" in seen["version_inputs"]
    assert (seen["created_status"], seen["waited_status"], seen["got_status"]) == ("starting", "succeeded", "succeeded")
    assert seen["predict_time"] > 0 and seen["listed"][0] == seen["waited_id"] and len(seen["listed"]) == 3
    assert seen["canceled_status"] == "succeeded"  # too late to cancel: answered as it is
    assert seen["missing"] == 404
