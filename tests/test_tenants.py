"""Identity and limits against a real Redis and the real API: keys, isolation between tenants,
per-tenant idempotency, quotas and rate limits checked in the create step, backpressure,
and per-tenant webhook secrets with rotation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from standardwebhooks import Webhook

from jobs.settings import Settings
from jobs.store import ANY_TENANT, JobStore, Owner
from jobs.tenants import KeyStore, Tenants
from tests.conftest import REPO_ROOT, keyed_client
from tests.webhook_receiver import Receiver
from webhooks.deliver import Deliverer, DeliveryConfig, SecretCache
from webhooks.outbox import Outbox

GOOD = {"prompt": "a pig with wings", "num_inference_steps": 4, "seed": 7}
JOB_ROUTES = [  # (method, path template): every route that names a job
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("GET", "/v1/jobs/{id}/deliveries"),
    ("POST", "/v1/jobs/{id}/deliveries/msg_{id}_1/redeliver"),
]
ALL_V1 = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    *JOB_ROUTES,
    ("GET", "/v1/models"),
    ("GET", "/v1/workers"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("DELETE", "/v1/keys/00000000"),
    ("GET", "/v1/webhook-secret"),
    ("POST", "/v1/webhook-secret/rotate"),
]


def submit(client: FlaskClient, **body: Any) -> Any:
    return client.post("/v1/jobs", json={**GOOD, **body})


def created(client: FlaskClient, **body: Any) -> str:
    response = submit(client, **body)
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id: str = response.get_json()["id"]
    return job_id


def call(client: FlaskClient, method: str, path: str, **kw: Any) -> Any:
    return client.open(path, method=method, **kw)


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    return body


# -- keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), ALL_V1)
def test_every_v1_route_needs_a_valid_key(app: Any, admin_key: str, method: str, path: str) -> None:
    path = path.format(id="0123abcd")
    anonymous = app.test_client()
    for client in (
        anonymous,
        keyed_client(app, "dq_00000000_" + "A" * 43),  # well-formed, unknown
        keyed_client(app, "not-a-key"),
        keyed_client(app, admin_key[:-1] + ("B" if admin_key[-1] != "B" else "C")),  # one character off
    ):
        response = call(client, method, path)
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    basic = app.test_client()
    basic.environ_base["HTTP_AUTHORIZATION"] = "Basic dXNlcjpwYXNz"
    assert_problem(call(basic, method, path), 401)
    assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200


def test_a_revoked_key_is_refused_within_a_second(app: Any, client: FlaskClient, redis_client: redis.Redis) -> None:
    made = client.post("/v1/keys", json={"tenant": "acme", "label": "ci"})
    assert made.status_code == 201
    record = made.get_json()
    acme = keyed_client(app, record["key"])
    assert acme.get("/v1/jobs").status_code == 200  # now cached by this process
    other_process = keyed_client(__import__("api").create_app(app.extensions["dq"].settings), record["key"])
    assert other_process.get("/v1/jobs").status_code == 200
    assert client.delete(f"/v1/keys/{record['prefix']}").status_code == 204
    revoked_at = time.monotonic()
    deadline = revoked_at + 1.5
    while acme.get("/v1/jobs").status_code != 401 or other_process.get("/v1/jobs").status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still worked after 1.5 s"
        time.sleep(0.05)
    print(f"\nrevoked key refused by both processes {time.monotonic() - revoked_at:.2f} s after DELETE")
    assert time.monotonic() - revoked_at <= 1.0
    assert_problem(client.delete(f"/v1/keys/{record['prefix']}"), 404)


def test_key_routes_are_for_admins_and_never_show_a_secret(
    client: FlaskClient, tenant_client: Callable[..., FlaskClient], redis_client: redis.Redis
) -> None:
    made = client.post(
        "/v1/keys",
        json={"tenant": "acme", "label": "ci", "rate_limit_per_s": 5, "max_active_jobs": 3, "max_priority": "high"},
    )
    assert made.status_code == 201 and made.headers["Location"].startswith("/v1/keys/")
    record = made.get_json()
    assert record["key"].startswith(f"dq_{record['prefix']}_") and len(record["key"]) > 40
    assert (record["tenant"], record["label"], record["admin"], record["max_active_jobs"]) == ("acme", "ci", False, 3)
    listed = client.get("/v1/keys").get_json()["data"]
    assert {k["prefix"] for k in listed} >= {record["prefix"]}
    assert not any("key" in k or "digest" in k for k in listed)
    assert record["key"] not in json.dumps(listed)
    assert client.get("/v1/keys?tenant=acme").get_json()["data"][0]["prefix"] == record["prefix"]
    stored = redis_client.hgetall(f"dq:apikey:{record['prefix']}")
    assert record["key"].encode() not in b"".join(stored.values())  # only a digest is stored
    for bad in ({"tenant": "Not A Tenant"}, {"tenant": "x", "admin": "yes"}, {"label": "no tenant"}, []):
        assert_problem(client.post("/v1/keys", json=bad), 422)
    acme = tenant_client("acme")
    for method, path in [("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/x"), ("GET", "/v1/workers")]:
        assert_problem(call(acme, method, path, json={"tenant": "acme"}), 403)
    assert acme.get("/v1/models").status_code == 200  # models are for everyone


def test_dq_keys_commands(settings: Settings, redis_client: redis.Redis) -> None:
    env = {"DQ_REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin"}

    def dq(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dq", "keys", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60)

    made = dq("create", "--tenant", "acme", "--label", "cli", "--admin")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert KeyStore(redis_client).lookup(key) is not None
    listed = json.loads(dq("list").stdout)["data"]
    assert [(k["tenant"], k["label"], k["admin"]) for k in listed] == [("acme", "cli", True)]
    assert key not in dq("list").stdout
    assert dq("revoke", listed[0]["prefix"]).returncode == 0
    assert KeyStore(redis_client).lookup(key) is None
    assert dq("revoke", listed[0]["prefix"]).returncode == 1
    assert dq("create", "--tenant", "Bad Name").returncode == 2


# -- isolation -----------------------------------------------------------------------------------
def test_a_tenant_sees_only_its_own_jobs(
    client: FlaskClient, tenant_client: Callable[..., FlaskClient], redis_client: redis.Redis
) -> None:
    acme, globex = tenant_client("acme"), tenant_client("globex")
    acme_ids = [created(acme, seed=i) for i in range(5)]
    globex_ids = [created(globex, seed=i) for i in range(3)]
    theirs = acme_ids[0]
    for method, path in JOB_ROUTES:
        foreign = call(globex, method, path.format(id=theirs))
        unknown = call(globex, method, path.format(id="f" * 32))
        assert_problem(foreign, 404)
        assert foreign.get_json()["detail"].replace(theirs, "X") == unknown.get_json()["detail"].replace("f" * 32, "X")
    assert acme.get(f"/v1/jobs/{theirs}").status_code == 200
    assert client.get(f"/v1/jobs/{theirs}").status_code == 200  # admins see every tenant
    # lists and every cursor page: only one's own, newest first
    for tenant_client_, ids in ((acme, acme_ids), (globex, globex_ids)):
        seen, cursor = [], None
        while True:
            page = tenant_client_.get("/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")).get_json()
            seen += [j["id"] for j in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids))
    assert [j["id"] for j in globex.get("/v1/jobs?status=queued").get_json()["data"]] == list(reversed(globex_ids))
    assert globex.get("/v1/jobs?tenant=acme").get_json()["data"] == globex.get("/v1/jobs").get_json()["data"]
    admin_all = client.get("/v1/jobs?limit=100").get_json()["data"]
    assert {j["id"] for j in admin_all} == set(acme_ids + globex_ids)
    assert [j["id"] for j in client.get("/v1/jobs?tenant=globex").get_json()["data"]] == list(reversed(globex_ids))
    assert_problem(client.get("/v1/jobs?tenant=Bad Name"), 422)
    # cancel: not another tenant's
    assert_problem(globex.post(f"/v1/jobs/{theirs}/cancel"), 404)
    assert acme.get(f"/v1/jobs/{theirs}").get_json()["status"] == "queued"
    assert acme.post(f"/v1/jobs/{theirs}/cancel").status_code == 200
    with_hook = created(acme)
    assert acme.get(f"/v1/jobs/{with_hook}/deliveries").status_code == 200
    assert_problem(globex.get(f"/v1/jobs/{with_hook}/deliveries"), 404)


def test_idempotency_keys_are_per_tenant(tenant_client: Callable[..., FlaskClient]) -> None:
    acme, globex = tenant_client("acme"), tenant_client("globex")
    first = acme.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "order-1"})
    again = acme.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "order-1"})
    other = globex.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "order-1"})
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 202)
    assert first.get_json()["id"] == again.get_json()["id"] != other.get_json()["id"]


# -- quotas and rate limits ----------------------------------------------------------------------
def burst(client: FlaskClient, n: int) -> list[Any]:
    """``n`` submits at once from ``n`` threads."""
    barrier = threading.Barrier(n)
    responses: list[Any] = []

    def one() -> None:
        barrier.wait()
        responses.append(submit(client))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return responses


def test_a_burst_against_max_active_jobs_creates_exactly_n(
    tenant_client: Callable[..., FlaskClient], redis_client: redis.Redis
) -> None:
    acme = tenant_client("acme", max_active_jobs=5, rate_limit_per_s=1000, rate_limit_burst=1000)
    responses = burst(acme, 20)
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 5 + [429] * 15
    assert redis_client.zcard("dq:jobs") == 5 and redis_client.zcard("dq:pending:tiny-sd") == 5
    refused = next(r for r in responses if r.status_code == 429)
    body = assert_problem(refused, 429)
    assert "max_active_jobs=5" in body["detail"] and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Policy"] == '"active";q=5' and refused.headers["RateLimit"] == '"active";r=0'
    # a job that ends frees its place
    job_id = next(r.get_json()["id"] for r in responses if r.status_code == 202)
    assert acme.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert submit(acme).status_code == 202 and submit(acme).status_code == 429


def test_a_burst_against_the_rate_limit_creates_exactly_the_bucket(
    tenant_client: Callable[..., FlaskClient], redis_client: redis.Redis
) -> None:
    acme = tenant_client("acme", rate_limit_per_s=0.5, rate_limit_burst=4)
    responses = burst(acme, 12)
    assert sorted(r.status_code for r in responses) == [202] * 4 + [429] * 8
    assert redis_client.zcard("dq:jobs") == 4
    ok = [r for r in responses if r.status_code == 202]
    assert all(r.headers["RateLimit-Policy"] == '"default";q=4;w=8' for r in ok)
    assert sorted(r.headers["RateLimit"] for r in ok)[0].startswith('"default";r=0;')
    refused = next(r for r in responses if r.status_code == 429)
    assert_problem(refused, 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 2  # one token at 0.5/s: within 2 s
    assert refused.headers["RateLimit"].startswith('"default";r=0;')
    globex = tenant_client("globex", rate_limit_per_s=0.5, rate_limit_burst=4)
    assert submit(globex).status_code == 202  # limits are per key


def test_backpressure_refuses_with_retry_after(
    app: Any, client: FlaskClient, s3_settings: Settings, redis_client: redis.Redis
) -> None:
    from api import create_app

    small = keyed_client(create_app(s3_settings.with_(max_backlog=3)), client.environ_base["HTTP_AUTHORIZATION"][7:])
    for _ in range(3):
        assert submit(small).status_code == 202
    refused = submit(small)
    assert_problem(refused, 429)["type"].endswith("/backpressure")
    assert int(refused.headers["Retry-After"]) >= 1
    assert redis_client.zcard("dq:pending:tiny-sd") == 3
    # estimated wait: 3 queued, one live worker, 2 s per job → the next would wait 8 s > 5 s
    now = time.time()
    redis_client.zadd("dq:workers:tiny-sd", {"w1": now})
    redis_client.hset("dq:model:tiny-sd", mapping={"gen_ewma_s": "2.0", "worker_seen_at": repr(now)})
    waity = keyed_client(
        create_app(s3_settings.with_(max_queue_wait_s=5)), client.environ_base["HTTP_AUTHORIZATION"][7:]
    )
    refused = submit(waity)
    assert_problem(refused, 429)
    assert int(refused.headers["Retry-After"]) == 3  # 8 s estimated, 5 s allowed
    # no worker seen for a while: 503
    redis_client.delete("dq:workers:tiny-sd")
    redis_client.hset("dq:model:tiny-sd", "worker_seen_at", repr(now - 600))
    lonely = keyed_client(create_app(s3_settings.with_(no_worker_s=60)), client.environ_base["HTTP_AUTHORIZATION"][7:])
    assert_problem(submit(lonely), 503)["type"].endswith("/no-worker")
    assert redis_client.zcard("dq:jobs") == 3  # nothing refused was created


# -- webhook secrets -----------------------------------------------------------------------------
def deliver_all(redis_client: redis.Redis, settings: Settings) -> None:
    config = DeliveryConfig.from_settings(settings.with_(webhook_allowlist="127.0.0.1", webhook_retry_schedule_s="0"))
    outbox = Outbox(redis_client)
    deliverer = Deliverer(config, outbox, None, SecretCache(Tenants(redis_client), ttl_s=0))
    deliverer.deliver_due()
    deliverer.sender.close()


def test_each_tenant_signs_with_its_own_secret_and_rotation_signs_with_both(
    tenant_client: Callable[..., FlaskClient], redis_client: redis.Redis, s3_settings: Settings
) -> None:
    from api import create_app

    local_hooks = create_app(s3_settings.with_(webhook_allowlist="127.0.0.1"))
    acme, globex = tenant_client("acme", on=local_hooks), tenant_client("globex", on=local_hooks)
    secrets = {name: c.get("/v1/webhook-secret").get_json() for name, c in (("acme", acme), ("globex", globex))}
    assert secrets["acme"]["secret"] != secrets["globex"]["secret"] and secrets["acme"]["previous_secret"] is None
    assert acme.get("/v1/webhook-secret").get_json() == secrets["acme"]  # stable
    receiver = Receiver(secrets["acme"]["secret"]).start()
    store = JobStore(redis_client)
    try:
        for c in (acme, globex):
            job_id = created(c, webhook=receiver.url)
            assert store.cancel(job_id, "tiny-sd", tenant=ANY_TENANT) == "canceled"
        deliver_all(redis_client, s3_settings)
        by_tenant = {r.json()["data"]["id"]: r for r in receiver.snapshot()}
        assert len(by_tenant) == 2
        for request in receiver.snapshot():
            tenant = "acme" if request.verified else "globex"
            Webhook(secrets[tenant]["secret"]).verify(request.body, request.headers)  # raises if not
        assert sum(r.verified for r in receiver.snapshot()) == 1  # acme's secret verifies acme's only

        rotated = acme.post("/v1/webhook-secret/rotate").get_json()
        assert rotated["previous_secret"] == secrets["acme"]["secret"] != rotated["secret"]
        assert rotated["previous_valid_until"] is not None
        job_id = created(acme, webhook=receiver.url)
        store.cancel(job_id, "tiny-sd", tenant=ANY_TENANT)
        deliver_all(redis_client, s3_settings)
        during = receiver.snapshot()[-1]
        assert len(during.headers["webhook-signature"].split()) == 2
        for secret in (rotated["secret"], rotated["previous_secret"]):
            Webhook(secret).verify(during.body, during.headers)  # either secret verifies it
    finally:
        receiver.close()
    assert store.get(job_id, tenant="globex") is None


def test_auth_off_is_an_explicit_opt_out(s3_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from api import create_app

    with caplog.at_level("WARNING", logger="dq.api"):
        open_app = create_app(s3_settings.with_(auth=False)).test_client()
    assert "AUTHENTICATION IS OFF" in caplog.text
    response = submit(open_app)
    assert response.status_code == 202 and response.get_json()["tenant"] == "default"
    assert open_app.get("/v1/workers").status_code == 200


def test_jobs_remember_their_owner(client: FlaskClient, tenant_client: Callable[..., FlaskClient]) -> None:
    acme = tenant_client("acme")
    job = acme.post("/v1/jobs", json=GOOD).get_json()
    assert job["tenant"] == "acme"
    record = JobStore(client.application.extensions["dq"].redis).get(job["id"], tenant="acme")
    assert record is not None and record.tenant == "acme" and record.api_key and Owner("acme").tenant == record.tenant
