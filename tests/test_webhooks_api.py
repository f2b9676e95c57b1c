"""The webhook edges of the HTTP API: SSRF refusals at submit (422 naming ``webhook``, nothing
created), the allow-list, and the deliveries endpoints' 404s."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from jobs.settings import Settings
from jobs.tenants import KeyStore
from tests.conftest import keyed_client

GOOD = {"prompt": "a pig with wings", "num_inference_steps": 4, "seed": 7}


def post(client: FlaskClient, body: Any) -> Any:
    return client.post("/v1/jobs", data=json.dumps(body), headers={"Content-Type": "application/json"})


def client_with(settings: Settings, allowlist: str) -> FlaskClient:
    from api import create_app

    app = create_app(settings.with_(webhook_allowlist=allowlist))
    app.testing = True
    _, key = KeyStore(redis.Redis.from_url(settings.redis_url)).create("default", admin=True)
    return keyed_client(app, key)


def nothing_created(r: redis.Redis) -> bool:
    return r.zcard("dq:jobs") == 0 and r.llen("gen.tiny-sd") == 0 and not r.keys("dq:job:*")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),
        ("http://10.0.0.8/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0:8000/hook", "unspecified"),
        ("http://[::1]/hook", "loopback"),
        ("http://[fc00::1]/hook", "private"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
        ("gopher://example.com/hook", "http(s)"),
    ],
)
def test_unsafe_webhook_urls_are_refused_and_create_nothing(
    client: FlaskClient, redis_client: redis.Redis, url: str, reason: str
) -> None:
    response = post(client, {**GOOD, "webhook": url})
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    problem = response.get_json(force=True)
    (error,) = problem["errors"]
    assert error["field"] == "webhook" and reason in error["message"], problem
    assert nothing_created(redis_client)


def test_the_allowlist_permits_hosts_and_cidrs(s3_settings: Settings, redis_client: redis.Redis) -> None:
    by_ip = client_with(s3_settings, "127.0.0.1")
    accepted = post(by_ip, {**GOOD, "webhook": "http://127.0.0.1:9/hook", "webhook_events_filter": ["succeeded"]})
    assert accepted.status_code == 202
    job = accepted.get_json()
    assert job["webhook"] == "http://127.0.0.1:9/hook" and job["webhook_events_filter"] == ["succeeded"]
    assert post(by_ip, {**GOOD, "webhook": "http://10.0.0.8/hook"}).status_code == 422
    assert post(client_with(s3_settings, "localhost"), {**GOOD, "webhook": "http://localhost/h"}).status_code == 202
    private = client_with(s3_settings, "10.0.0.0/8, ::1")
    assert post(private, {**GOOD, "webhook": "http://10.20.30.40/h"}).status_code == 202
    assert post(private, {**GOOD, "webhook": "http://[::1]:8080/h"}).status_code == 202
    assert post(private, {**GOOD, "webhook": "http://192.168.0.1/h"}).status_code == 422


def test_deliveries_of_a_job_without_attempts_and_the_404s(s3_settings: Settings) -> None:
    client = client_with(s3_settings, "127.0.0.1")
    job = post(client, {**GOOD, "webhook": "http://127.0.0.1:9/hook"}).get_json()
    assert client.get(f"/v1/jobs/{job['id']}/deliveries").get_json() == {"data": []}
    for response in (
        client.get("/v1/jobs/nope/deliveries"),
        client.post("/v1/jobs/nope/deliveries/msg_nope_1/redeliver"),
        client.post(f"/v1/jobs/{job['id']}/deliveries/msg_{job['id']}_1/redeliver"),  # no event yet
    ):
        assert response.status_code == 404 and response.mimetype == "application/problem+json"
    detail = client.post(f"/v1/jobs/{job['id']}/deliveries/msg_x/redeliver").get_json(force=True)
    assert detail["title"] == "Delivery not found" and "msg_x" in detail["detail"]
