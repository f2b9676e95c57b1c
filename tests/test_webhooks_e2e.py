"""Webhooks with real processes: worker processes, the ``dq webhooks`` deliverer as a
subprocess, redis-server, SeaweedFS, and a real HTTP receiver that verifies every signature.

Events arrive in order and match the job; a receiver that answers 500, then hangs, then
refuses connections still gets every event, retried under the same webhook-id; a dead
receiver does not slow the worker down."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest
from flask.testing import FlaskClient

from dq.procs import Service, stop_process
from jobs.settings import Settings
from tests.conftest import REPO_ROOT, WorkerFactory, worker_env
from tests.helpers import wait_for
from tests.webhook_receiver import SECRET, Receiver

EMULATED = {"DQ_BACKEND": "emulated", "DQ_EMULATED_SECONDS": "0.05"}
DelivererFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def wh_client(s3_settings: Settings) -> FlaskClient:
    from api import create_app

    app = create_app(s3_settings.with_(webhook_allowlist="127.0.0.1"))
    app.testing = True
    return app.test_client()


@pytest.fixture
def start_deliverer(s3_settings: Settings, s3_service: Service, session_dir: Path) -> Iterator[DelivererFactory]:
    """``dq webhooks`` as a subprocess, signing with SECRET, 127.0.0.1 allowed, a compressed schedule."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        log = (session_dir / f"webhooks-{time.monotonic_ns()}.log").open("wb")
        logs.append(log)
        settings = {
            "DQ_WEBHOOK_SECRET": SECRET,
            "DQ_WEBHOOK_ALLOWLIST": "127.0.0.1",
            "DQ_WEBHOOK_RETRY_SCHEDULE_S": "0" + ",0.3" * 40,
            "DQ_WEBHOOK_TIMEOUT_S": "1",
            **env,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "dq", "webhooks"],
            env=worker_env(s3_settings, s3_service, **settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc, grace_s=10)
    for log in logs:
        log.close()


def submit(client: FlaskClient, **body: Any) -> str:
    response = client.post(
        "/v1/jobs", data=json.dumps({"prompt": "a pig with wings", **body}), content_type="application/json"
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id: str = response.get_json()["id"]
    return job_id


def without_signatures(job: dict[str, Any]) -> dict[str, Any]:
    """The job with presigned URLs cut at their query string (each read mints a new one)."""
    outputs = [{**o, "url": o["url"].split("?")[0] if o["url"] else None} for o in job["outputs"]]
    return {**job, "outputs": outputs}


def seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def terminal_delivered(receiver: Receiver, job_ids: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        finals = {"job.succeeded", "job.failed", "job.canceled"}
        got = {(b["data"]["id"]) for b in (r.json() for r in receiver.delivered()) if b["type"] in finals}
        return set(job_ids) <= got

    return check


def test_events_arrive_in_order_signed_and_equal_to_the_job(
    wh_client: FlaskClient, start_worker: WorkerFactory, start_deliverer: DelivererFactory, receiver: Receiver
) -> None:
    start_worker(model="tiny-broken", DQ_BACKEND="tests.support:raising_backend")
    deliverer = start_deliverer()
    hook = {
        "webhook": receiver.url + "/hooks/dq?source=tests",
        "webhook_events_filter": ["started", "progress", "succeeded", "failed"],
    }
    # ~0.8 s runs: long enough for progress writes (every DQ_PROGRESS_INTERVAL_S = 0.25 s)
    ok_ids = [submit(wh_client, model="tiny-broken", num_inference_steps=40, seed=i, **hook) for i in range(2)]
    bad_id = submit(wh_client, model="tiny-broken", prompt="please explode", num_inference_steps=4, **hook)
    finals = {job_id: wait_for(wh_client, job_id) for job_id in [*ok_ids, bad_id]}
    receiver.wait_until(terminal_delivered(receiver, [*ok_ids, bad_id]), 30, "every terminal event")

    requests = receiver.snapshot()
    assert requests and all(r.verified for r in requests)
    assert all(r.path == "/hooks/dq?source=tests" for r in requests)
    assert len({r.webhook_id for r in requests}) == len(requests)  # healthy receiver: each message once
    for job_id in [*ok_ids, bad_id]:
        final = finals[job_id]
        bodies = receiver.delivered_for(job_id)
        types = [b["type"] for b in bodies]
        ending = "job.succeeded" if job_id in ok_ids else "job.failed"
        assert final["status"] == ending[4:]
        progress_expected = job_id in ok_ids  # the failing run explodes at step 2, before any write
        assert types[0] == "job.started" and types[-1] == ending and len(types) >= 2 + progress_expected, types
        assert set(types[1:-1]) == ({"job.progress"} if progress_expected else set()), types
        ids = [r.webhook_id for r in requests if r.json()["data"]["id"] == job_id]
        assert ids == [f"msg_{job_id}_{n}" for n in range(1, len(ids) + 1)]  # emitted order = arrival order
        assert bodies[0]["data"]["status"] == "running"
        assert without_signatures(bodies[-1]["data"]) == without_signatures(final)
        assert abs(seconds(bodies[-1]["timestamp"]) - seconds(final["completed_at"])) < 0.01
    failed = receiver.delivered_for(bad_id)[-1]["data"]
    assert failed["error"] == {"type": "generation_error", "message": "RuntimeError: the UNet exploded at step 2"}
    succeeded = receiver.delivered_for(ok_ids[0])[-1]["data"]
    assert succeeded["outputs"][0]["url"].startswith("http") and "X-Amz-Signature" in succeeded["outputs"][0]["url"]

    # every attempt recorded: one each, delivered
    records = wh_client.get(f"/v1/jobs/{ok_ids[0]}/deliveries").get_json()["data"]
    assert [r["delivery_id"] for r in records] == [f"msg_{ok_ids[0]}_{n}" for n in range(1, len(records) + 1)]
    assert {(r["attempt"], r["status_code"], r["outcome"], r["error"]) for r in records} == {
        (1, 204, "delivered", None)
    }

    # redelivery sends the succeeded message again, under the same webhook-id
    last_id = records[-1]["delivery_id"]
    response = wh_client.post(f"/v1/jobs/{ok_ids[0]}/deliveries/{last_id}/redeliver")
    assert response.status_code == 202 and response.get_json()["delivery_id"] == last_id
    receiver.wait_until(lambda: [r.webhook_id for r in receiver.delivered()].count(last_id) == 2, 15, "redelivery")
    again = [r for r in receiver.delivered() if r.webhook_id == last_id]
    assert again[0].json()["type"] == again[1].json()["type"] == "job.succeeded"
    assert without_signatures(again[0].json()["data"]) == without_signatures(again[1].json()["data"])
    records = wh_client.get(f"/v1/jobs/{ok_ids[0]}/deliveries").get_json()["data"]
    assert (records[-1]["delivery_id"], records[-1]["attempt"], records[-1]["outcome"]) == (last_id, 1, "delivered")

    # SIGTERM: a graceful stop
    deliverer.send_signal(signal.SIGTERM)
    assert deliverer.wait(15) == 0


def test_a_receiver_outage_is_retried_until_every_event_arrives(
    wh_client: FlaskClient, start_worker: WorkerFactory, start_deliverer: DelivererFactory, receiver: Receiver
) -> None:
    start_worker(**EMULATED)
    start_deliverer(DQ_WEBHOOK_TIMEOUT_S="0.5")
    start_deliverer(DQ_WEBHOOK_TIMEOUT_S="0.5")  # two deliverers share the outbox
    receiver.mode = "error"
    ids = [submit(wh_client, webhook=receiver.url + "/hook", seed=i) for i in range(4)]
    # 1.5 s of 500s, 1.5 s of a receiver that never answers, 1.5 s with nothing listening
    time.sleep(1.5)
    receiver.mode = "hang"
    time.sleep(1.5)
    receiver.stop()
    time.sleep(1.5)
    receiver.mode = "ok"
    receiver.start()  # the same port again
    receiver.wait_until(terminal_delivered(receiver, ids), 30, "every event after the outage")

    assert all(r.verified for r in receiver.snapshot())
    delivered_ids = [r.webhook_id for r in receiver.delivered()]
    assert len(delivered_ids) == len(set(delivered_ids)) == 2 * len(ids)  # each message delivered once
    for job_id in ids:
        assert [b["type"] for b in receiver.delivered_for(job_id)] == ["job.started", "job.succeeded"]
    first = f"msg_{ids[0]}_1"
    seen = [r for r in receiver.snapshot() if r.webhook_id == first]
    assert len(seen) >= 3 and {r.answered for r in seen} >= {500, 204}  # retried under one webhook-id
    records = [
        r for r in wh_client.get(f"/v1/jobs/{ids[0]}/deliveries").get_json()["data"] if r["delivery_id"] == first
    ]
    assert [r["attempt"] for r in records] == list(range(1, len(records) + 1))
    assert [r["outcome"] for r in records] == ["retrying"] * (len(records) - 1) + ["delivered"]
    codes = [r["status_code"] for r in records]
    assert 500 in codes and None in codes and codes[-1] == 204
    errors = " | ".join(r["error"] for r in records if r["status_code"] is None)
    assert "timeout" in errors and "connection failed" in errors, errors


def run_batch(client: FlaskClient, n: int, webhook: str) -> float:
    """Submit ``n`` jobs at once and return the worker's jobs/s over them."""
    ids = [submit(client, webhook=webhook, num_inference_steps=5, seed=i) for i in range(n)]
    jobs = [wait_for(client, job_id) for job_id in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    first = min(seconds(j["started_at"]) for j in jobs)
    last = max(seconds(j["completed_at"]) for j in jobs)
    return n / (last - first)


def test_a_dead_receiver_does_not_slow_the_worker(
    wh_client: FlaskClient, start_worker: WorkerFactory, start_deliverer: DelivererFactory, receiver: Receiver
) -> None:
    start_worker(**EMULATED)
    start_deliverer(DQ_WEBHOOK_TIMEOUT_S="2", DQ_WEBHOOK_RETRY_SCHEDULE_S="0,1,1,1,1,1")
    run_batch(wh_client, 3, receiver.url)  # warm-up
    healthy = run_batch(wh_client, 30, receiver.url)
    receiver.wait_until(lambda: len(receiver.delivered()) >= 66, 30, "the healthy batch's events")
    receiver.mode = "hang"  # every delivery attempt now waits out the 2 s timeout
    down = run_batch(wh_client, 30, receiver.url)
    print(f"\nworker jobs/s with the receiver healthy: {healthy:.1f}, hanging: {down:.1f} ({down / healthy:.2f}x)")
    assert down >= 0.8 * healthy
