"""The HTTP contract against a real Redis: every bad input is a problem+json 4xx and creates
nothing; idempotency holds under races; reads, lists and models."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from jobs.settings import Settings
from jobs.tenants import new_api_key
from tests.conftest import keyed_client

GOOD = {"prompt": "a pig with wings", "num_inference_steps": 4, "seed": 7}


def post(client: FlaskClient, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post("/v1/jobs", data=data, headers={"Content-Type": "application/json", **headers})


def nothing_created(r: redis.Redis) -> bool:
    return r.zcard("dq:jobs") == 0 and r.llen("gen.tiny-sd") == 0 and not r.keys("dq:job:*")


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert {"type", "title", "status", "detail"} <= body.keys() and body["status"] == status
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


def test_submit_returns_202_location_and_the_job(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = post(client, {**GOOD, "metadata": {"order": 12}})
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert job["input"] == {
        "prompt": "a pig with wings",
        "negative_prompt": None,
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "seed": 7,
        "width": 64,
        "height": 64,
        "num_images": 1,
        "output_format": "png",
        "ttl_seconds": 86_400,
        "timeout_seconds": 600,
    }
    assert job["metadata"] == {"order": 12}
    assert job["progress"] == {"step": 0, "total": 4}
    assert job["outputs"] == [] and job["error"] is None and job["attempts"] == 0
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert redis_client.llen("gen.tiny-sd") == 1  # published to the model's queue
    assert client.get(response.headers["Location"]).get_json()["id"] == job["id"]


def test_seed_is_drawn_and_recorded_when_absent(client: FlaskClient) -> None:
    seeds = {post(client, {"prompt": "p"}).get_json()["input"]["seed"] for _ in range(3)}
    assert all(isinstance(s, int) and 0 <= s <= 4_294_967_295 for s in seeds) and len(seeds) == 3


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ("{not json", 400, "body"),
        ("", 400, "body"),
        ("[1, 2]", 422, "body"),
        ({"num_inference_steps": 4}, 422, "prompt"),
        ({**GOOD, "num_inference_steps": 1000}, 422, "num_inference_steps"),
        ({**GOOD, "num_inference_steps": "many"}, 422, "num_inference_steps"),
        ({**GOOD, "guidance_scale": 99}, 422, "guidance_scale"),
        ({**GOOD, "seed": -5}, 422, "seed"),
        ({**GOOD, "width": 65}, 422, "width"),
        ({**GOOD, "width": 4096}, 422, "width"),
        ({**GOOD, "num_images": 12}, 422, "num_images"),
        ({**GOOD, "output_format": "bmp"}, 422, "output_format"),
        ({**GOOD, "model": "no-such-model"}, 422, "model"),
        ({**GOOD, "model": "tiny-static", "width": 128}, 422, "width"),
        ({**GOOD, "model": "tiny-static", "num_images": 1}, 422, "num_images"),
        ({**GOOD, "model": "tiny-static", "guidance_scale": 1.0}, 422, "guidance_scale"),
        ({**GOOD, "surprise": True}, 422, "surprise"),
        ({**GOOD, "metadata": {"x": "y" * 5000}}, 422, "metadata"),
        ({**GOOD, "webhook": "gopher://example.com"}, 422, "webhook"),
    ],
)
def test_bad_input_is_a_problem_and_creates_nothing(
    client: FlaskClient, redis_client: redis.Redis, body: Any, status: int, field: str
) -> None:
    assert_problem(post(client, body), status, field)
    assert nothing_created(redis_client)


def test_static_model_error_lists_allowed_values(client: FlaskClient) -> None:
    body = assert_problem(post(client, {**GOOD, "model": "tiny-static", "width": 512, "height": 512}), 422)
    messages = {e["field"]: e["message"] for e in body["errors"]}
    assert "64" in messages["width"] and "64" in messages["height"]


def test_static_model_defaults_to_its_compiled_shape(client: FlaskClient) -> None:
    job = post(client, {**GOOD, "model": "tiny-static"}).get_json()
    assert (job["input"]["width"], job["input"]["height"], job["input"]["num_images"]) == (64, 64, 2)


def test_oversized_body_is_413(client: FlaskClient, redis_client: redis.Redis) -> None:
    assert_problem(post(client, {**GOOD, "prompt": "x" * 100_000}), 413)
    assert nothing_created(redis_client)


@pytest.mark.parametrize(
    "body", ['{"prompt": "x", "guidance_scale": NaN}', "[" * 30_000 + "]" * 30_000, '{"prompt": "\\ud800 lone"}']
)
def test_what_python_parses_but_json_forbids_is_400(client: FlaskClient, redis_client: redis.Redis, body: str) -> None:
    assert_problem(post(client, body), 400, "body")
    assert nothing_created(redis_client)


def test_wrong_content_type_is_rejected(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = client.post("/v1/jobs", data="prompt=x", content_type="application/x-www-form-urlencoded")
    assert_problem(response, 415, "Content-Type")
    assert nothing_created(redis_client)


def test_unknown_job_and_unknown_route_are_404_problems(client: FlaskClient) -> None:
    assert_problem(client.get("/v1/jobs/does-not-exist"), 404)
    assert_problem(client.get("/v2/nothing"), 404)
    assert_problem(client.delete("/v1/jobs"), 405)


def test_idempotency_key_returns_the_original_job(client: FlaskClient, redis_client: redis.Redis) -> None:
    first = post(client, GOOD, **{"Idempotency-Key": "order-1"})
    again = post(client, dict(reversed(list(GOOD.items()))), **{"Idempotency-Key": "order-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert redis_client.llen("gen.tiny-sd") == 1
    conflict = post(client, {**GOOD, "seed": 8}, **{"Idempotency-Key": "order-1"})
    assert_problem(conflict, 422, "Idempotency-Key")
    assert redis_client.zcard("dq:jobs") == 1


def test_identical_racing_requests_create_one_job(app: Any, admin_key: str, redis_client: redis.Redis) -> None:
    ids: list[str] = []
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        local = keyed_client(app, admin_key)
        barrier.wait()
        response = post(local, GOOD, **{"Idempotency-Key": "race"})
        codes.append(response.status_code)
        ids.append(response.get_json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 7 + [202]
    assert len(set(ids)) == 1
    assert redis_client.zcard("dq:jobs") == 1 and redis_client.llen("gen.tiny-sd") == 1


def test_bad_idempotency_key_is_rejected(client: FlaskClient, redis_client: redis.Redis) -> None:
    assert_problem(post(client, GOOD, **{"Idempotency-Key": "k" * 300}), 422, "Idempotency-Key")
    assert nothing_created(redis_client)


def test_list_jobs_newest_first_with_cursor(client: FlaskClient) -> None:
    ids = [post(client, {**GOOD, "seed": i}).get_json()["id"] for i in range(5)]
    page = client.get("/v1/jobs?limit=3").get_json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:3]
    rest = client.get(f"/v1/jobs?limit=3&cursor={page['next_cursor']}").get_json()
    assert [j["id"] for j in rest["data"]] == ids[::-1][3:] and rest["next_cursor"] is None
    assert len(client.get("/v1/jobs?status=queued").get_json()["data"]) == 5
    assert client.get("/v1/jobs?status=succeeded").get_json()["data"] == []


@pytest.mark.parametrize(
    "query", ["status=done", "status=", "limit=0", "limit=1000", "limit=x", "limit=", "cursor=-1", "tenant=Bad"]
)
def test_list_rejects_bad_query(client: FlaskClient, query: str) -> None:
    assert_problem(client.get(f"/v1/jobs?{query}"), 422, query.split("=")[0])


def test_models_read_from_artifacts(client: FlaskClient) -> None:
    post(client, {**GOOD, "model": "tiny-static"})
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["data"]}
    assert {"tiny-sd", "tiny-static"} <= models.keys()
    static = models["tiny-static"]
    assert static["static"] and static["shapes"] == {"widths": [64], "heights": [64], "num_images": [2]}
    assert static["queue_depth"] == 1
    assert static["workers"] == {"ready": 0, "busy": 0, "loading": 0}
    assert models["tiny-sd"]["default"] and models["tiny-sd"]["backend"] == "diffusers"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_redis_down_gives_503_problems(settings: Settings) -> None:
    from api import create_app

    down = keyed_client(create_app(settings.with_(redis_url="redis://127.0.0.1:1/0")), new_api_key()[1])
    assert down.get("/healthz").status_code == 200
    assert_problem(down.get("/readyz"), 503)
    response = post(down, GOOD)
    assert_problem(response, 503)
    assert response.headers["Retry-After"]
    assert_problem(down.get("/v1/jobs/abc"), 503)
