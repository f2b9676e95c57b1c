"""The deliverer in this process against a real Redis and a real HTTP receiver: each HTTP
outcome, retries with the same webhook-id, give-up, per-job order, the SSRF re-check at
delivery time, claims, redelivery and the retention of the attempt records."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.keys import Keys
from jobs.settings import Settings
from jobs.store import ANY_TENANT, JobStore, Owner
from jobs.submit import new_job_id
from jobs.tenants import Tenants
from jobs.view import render_job
from tests.webhook_receiver import SECRET, Receiver, Reply
from webhooks.deliver import Deliverer, DeliveryConfig, SecretCache, Sender
from webhooks.outbox import Outbox
from webhooks.ssrf import check_webhook_url

INPUT = {
    "prompt": "a pig with wings",
    "negative_prompt": None,
    "num_inference_steps": 4,
    "guidance_scale": 7.5,
    "seed": 7,
    "width": 64,
    "height": 64,
    "num_images": 1,
    "output_format": "png",
}
KEYS = Keys()
OWNER = Owner("default")  # its webhook secret: DQ_WEBHOOK_SECRET (SECRET here)


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, retention_s=3600)


@pytest.fixture
def deliverers(settings: Settings, redis_client: redis.Redis) -> Iterator[Any]:
    made: list[Deliverer] = []

    def make(**changes: Any) -> Deliverer:
        values = {
            "webhook_secret": SECRET,
            "webhook_allowlist": "127.0.0.1",
            "webhook_retry_schedule_s": "0,0.05,0.05",
            "webhook_timeout_s": 1.0,
            "job_retention_s": 3600,
            **changes,
        }
        config = DeliveryConfig.from_settings(settings.with_(**values))
        secrets = SecretCache(Tenants(redis_client, default_secret=SECRET))
        deliverer = Deliverer(config, Outbox(redis_client, retention_s=3600), None, secrets)
        made.append(deliverer)
        return deliverer

    yield make
    for deliverer in made:
        deliverer.sender.close()


def canceled_job(store: JobStore, url: str) -> str:
    job_id = new_job_id()
    store.create(job_id, "tiny-sd", INPUT, owner=OWNER, webhook=url)
    assert store.cancel(job_id, "tiny-sd", tenant=ANY_TENANT) == "canceled"
    return job_id


def seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def attempts(outbox: Outbox, job_id: str) -> list[dict[str, Any]]:
    return outbox.deliveries(job_id)


def test_an_event_is_delivered_signed_and_recorded(
    store: JobStore, deliverers: Any, receiver: Receiver, redis_client: redis.Redis
) -> None:
    job_id = canceled_job(store, receiver.url + "/in/dq?src=tests")
    deliverer = deliverers()
    assert deliverer.deliver_due() == 1
    (request,) = receiver.snapshot()
    assert request.verified and request.path == "/in/dq?src=tests"
    assert request.webhook_id == f"msg_{job_id}_1"
    assert request.headers["user-agent"] == "diffusion-queue-webhooks/0.1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    body = request.json()
    record = store.get(job_id, tenant=ANY_TENANT)
    assert record is not None
    assert body["type"] == "job.canceled" and body["data"] == render_job(record, None, None)
    assert (
        body["timestamp"].endswith("Z")
        and abs(seconds(body["timestamp"]) - seconds(body["data"]["completed_at"])) < 0.01
    )
    (attempt,) = attempts(deliverer.outbox, job_id)
    assert attempt["delivery_id"] == request.webhook_id and attempt["event"] == "job.canceled"
    assert attempt["attempt"] == 1 and attempt["status_code"] == 204 and attempt["outcome"] == "delivered"
    assert attempt["error"] is None and attempt["next_attempt_at"] is None and attempt["latency_ms"] > 0
    assert attempt["at"].endswith("Z")
    # settled: nothing pending, nothing due; the record list lives as long as the job
    assert redis_client.llen(KEYS.webhook_pending(job_id)) == 0 and deliverer.outbox.due_count() == 0
    assert 0 < redis_client.ttl(KEYS.deliveries(job_id)) <= redis_client.ttl(KEYS.job(job_id))
    assert deliverer.deliver_due() == 0


@pytest.mark.parametrize(
    ("reply", "outcome", "final"),
    [
        (Reply(200, body=b"thanks"), "delivered", True),
        (Reply(410), "gone", True),
        (Reply(302, {"Location": "/elsewhere"}), "failed", True),
        (Reply(400, body=b"bad signature"), "failed", True),
        (Reply(404), "failed", True),
        (Reply(500), "retrying", False),
        (Reply(503), "retrying", False),
        (Reply(429), "retrying", False),
        (Reply(408), "retrying", False),
    ],
)
def test_each_status_class_settles_the_message(
    store: JobStore,
    deliverers: Any,
    receiver: Receiver,
    redis_client: redis.Redis,
    reply: Reply,
    outcome: str,
    final: bool,
) -> None:
    receiver.script = [reply]
    job_id = canceled_job(store, receiver.url + "/hook")
    deliverer = deliverers(webhook_retry_schedule_s="0,30")
    deliverer.deliver_due()
    (attempt,) = attempts(deliverer.outbox, job_id)
    assert attempt["status_code"] == reply.status and attempt["outcome"] == outcome
    assert [r.path for r in receiver.snapshot()] == ["/hook"]  # a redirect is not followed
    pending = redis_client.lrange(KEYS.webhook_pending(job_id), 0, -1)
    due = redis_client.zscore(KEYS.webhook_due(), job_id)
    if final:
        assert pending == [] and due is None and attempt["next_attempt_at"] is None
        assert (attempt["error"] is None) == (outcome == "delivered")
    else:
        assert pending == [f"msg_{job_id}_1".encode()] and due is not None
        assert 27 <= due - time.time() <= 33  # the schedule's 30 s ±10 %
        assert attempt["next_attempt_at"] is not None and attempt["error"].startswith(f"HTTP {reply.status}")
        assert redis_client.hget(KEYS.webhook_attempts(job_id), f"msg_{job_id}_1") == b"1"


def test_retries_keep_the_webhook_id_then_give_up_and_redeliver_starts_over(
    store: JobStore, deliverers: Any, receiver: Receiver, redis_client: redis.Redis
) -> None:
    receiver.mode = "error"
    job_id = canceled_job(store, receiver.url)
    deliverer = deliverers(webhook_retry_schedule_s="0,0.05,0.05")
    deadline = time.monotonic() + 10
    while redis_client.llen(KEYS.webhook_pending(job_id)) and time.monotonic() < deadline:
        deliverer.deliver_due()
        time.sleep(0.02)
    records = attempts(deliverer.outbox, job_id)
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert [r["outcome"] for r in records] == ["retrying", "retrying", "given_up"]
    assert [r["status_code"] for r in records] == [500, 500, 500]
    assert records[0]["next_attempt_at"] and records[-1]["next_attempt_at"] is None
    assert "receiver is down for maintenance" in records[-1]["error"]
    requests = receiver.snapshot()
    assert len(requests) == 3 and {r.webhook_id for r in requests} == {f"msg_{job_id}_1"}
    assert all(r.verified for r in requests) and deliverer.outbox.due_count() == 0
    # redelivery: the same message id, attempts counted from 1 again
    receiver.mode = "ok"
    assert deliverer.outbox.redeliver(job_id, f"msg_{job_id}_1", time.time())
    assert not deliverer.outbox.redeliver(job_id, f"msg_{job_id}_9", time.time())
    deliverer.deliver_due()
    last = attempts(deliverer.outbox, job_id)[-1]
    assert (last["delivery_id"], last["attempt"], last["outcome"]) == (f"msg_{job_id}_1", 1, "delivered")
    assert receiver.delivered()[-1].webhook_id == f"msg_{job_id}_1"


def test_retry_after_pushes_the_next_attempt_back(
    store: JobStore, deliverers: Any, receiver: Receiver, redis_client: redis.Redis
) -> None:
    receiver.script = [Reply(429, {"Retry-After": "30"})]
    job_id = canceled_job(store, receiver.url)
    deliverer = deliverers(webhook_retry_schedule_s="0,0.05,0.05")
    deliverer.deliver_due()
    due = redis_client.zscore(KEYS.webhook_due(), job_id)
    assert due is not None and 29 <= due - time.time() <= 31
    assert deliverer.deliver_due() == 0  # not due yet
    assert attempts(deliverer.outbox, job_id)[0]["outcome"] == "retrying"


def test_a_failing_head_holds_back_the_jobs_later_events(store: JobStore, deliverers: Any, receiver: Receiver) -> None:
    job_id = new_job_id()
    store.create(
        job_id, "tiny-sd", INPUT, owner=OWNER, webhook=receiver.url, webhook_events_filter=["started", "failed"]
    )
    started = store.start(job_id, "tiny-sd", "w-test", lease_s=30)
    assert store.fail(job_id, "tiny-sd", started.attempt, "generation_error", "boom")
    receiver.script = [Reply(503)]
    deliverer = deliverers(webhook_retry_schedule_s="0,0.05")
    deliverer.deliver_due()
    assert [r.webhook_id for r in receiver.snapshot()] == [f"msg_{job_id}_1"]  # job.failed waits its turn
    time.sleep(0.1)
    deliverer.deliver_due()  # the head, then (same claim) the next one
    assert [r.json()["type"] for r in receiver.delivered()] == ["job.started", "job.failed"]
    assert receiver.delivered()[-1].json()["data"]["error"] == {"type": "generation_error", "message": "boom"}
    assert [r["outcome"] for r in attempts(deliverer.outbox, job_id)] == ["retrying", "delivered", "delivered"]


def test_an_unsafe_target_at_delivery_is_refused_without_a_request(
    store: JobStore, deliverers: Any, receiver: Receiver, redis_client: redis.Redis
) -> None:
    job_id = canceled_job(store, receiver.url)  # accepted while 127.0.0.1 was allowed
    deliverer = deliverers(webhook_allowlist="")
    deliverer.deliver_due()
    (attempt,) = attempts(deliverer.outbox, job_id)
    assert attempt["outcome"] == "refused" and attempt["status_code"] is None
    assert "127.0.0.1 is a loopback address" in attempt["error"]
    assert receiver.snapshot() == [] and redis_client.llen(KEYS.webhook_pending(job_id)) == 0


def test_timeouts_and_refused_connections_are_retried(store: JobStore, deliverers: Any, receiver: Receiver) -> None:
    receiver.mode = "hang"
    job_id = canceled_job(store, receiver.url)
    deliverer = deliverers(webhook_timeout_s=0.3, webhook_retry_schedule_s="0,0.05,0.05")
    deliverer.deliver_due()
    receiver.stop()  # nothing listens on the port now
    time.sleep(0.1)
    deliverer.deliver_due()
    first, second = attempts(deliverer.outbox, job_id)
    assert first["status_code"] is None and first["error"].startswith("timeout") and first["latency_ms"] >= 250
    assert second["status_code"] is None and second["error"].startswith("connection failed")
    assert [first["outcome"], second["outcome"]] == ["retrying", "retrying"]


def test_claims_are_exclusive_and_a_lapsed_claim_comes_back(redis_client: redis.Redis) -> None:
    outbox = Outbox(redis_client)
    now = time.time()
    redis_client.zadd(KEYS.webhook_due(), {"job-a": now - 1, "job-b": now - 0.5, "job-c": now + 60})
    assert outbox.claim(now, 0.3, 10) == ["job-a", "job-b"]
    assert outbox.claim(now + 0.1, 0.3, 10) == []  # held by the first claimer
    assert sorted(outbox.claim(now + 0.31, 0.3, 1) + outbox.claim(now + 0.31, 0.3, 1)) == ["job-a", "job-b"]
    outbox.release("job-a", now)  # nothing pending for it
    assert redis_client.zscore(KEYS.webhook_due(), "job-a") is None


def test_records_made_after_the_job_expired_still_expire(
    store: JobStore, deliverers: Any, receiver: Receiver, redis_client: redis.Redis
) -> None:
    job_id = canceled_job(store, receiver.url)
    redis_client.persist(KEYS.webhook_events(job_id))
    redis_client.delete(KEYS.job(job_id))  # retention ran out while the message was pending
    deliverer = deliverers()
    deliverer.deliver_due()
    assert attempts(deliverer.outbox, job_id)[0]["outcome"] == "delivered"
    assert 0 < redis_client.ttl(KEYS.deliveries(job_id)) <= 3600


def test_https_goes_to_the_pinned_address_with_the_urls_name_for_sni_and_verification(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.test"]
        + ["-addext", "subjectAltName=DNS:hooks.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    seen: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["host"] = self.headers["Host"]
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def note_server_name(_sock: Any, name: str | None, _context: Any) -> None:
        seen["sni"] = name or ""

    context.sni_callback = note_server_name
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    sender = Sender(5, 2)
    sender.http.connection_pool_kw["ca_certs"] = str(cert)  # trust the test certificate
    dns = {"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    try:
        target = check_webhook_url(f"https://hooks.test:{port}/in", "127.0.0.1", lambda h, p: dns[h])
        assert sender.post(target, b"{}", {"Content-Type": "application/json"}).status == 204
        assert seen == {"sni": "hooks.test", "host": f"hooks.test:{port}"}
        wrong = check_webhook_url(f"https://other.test:{port}/in", "127.0.0.1", lambda h, p: dns[h])
        reply = sender.post(wrong, b"{}", {})
        assert reply.status is None and "doesn't match 'hooks.test'" in (reply.error or "")
    finally:
        sender.close()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_host_that_stops_resolving_is_retried_not_dropped(
    store: JobStore, deliverers: Any, receiver: Receiver
) -> None:
    answers: list[Any] = [socket.gaierror(-2, "Name or service not known"), ["127.0.0.1"]]

    def flaky_dns(host: str, port: int) -> list[str]:
        assert host == "hooks.example.test"
        answer = answers.pop(0) if answers else ["127.0.0.1"]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    job_id = canceled_job(store, f"http://hooks.example.test:{receiver.port}/hook")
    deliverer = deliverers(webhook_retry_schedule_s="0,0.05,0.05")
    deliverer.resolve = flaky_dns
    deliverer.deliver_due()
    time.sleep(0.1)
    deliverer.deliver_due()
    first, second = attempts(deliverer.outbox, job_id)
    assert (first["outcome"], first["status_code"]) == ("retrying", None)
    assert "does not resolve" in first["error"]
    assert (second["delivery_id"], second["outcome"], second["status_code"]) == (first["delivery_id"], "delivered", 204)
    (request,) = receiver.snapshot()
    assert (
        request.webhook_id == first["delivery_id"] and request.headers["host"] == f"hooks.example.test:{receiver.port}"
    )
