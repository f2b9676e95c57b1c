"""Webhooks with real processes: worker processes, the ``dq webhooks`` deliverer as a
subprocess, redis-server, SeaweedFS, and a real HTTP receiver that verifies every signature.

Events arrive in order and match the job; a receiver that answers 500, then hangs, then
refuses connections still gets every event, retried under the same webhook-id; a dead
receiver does not slow the worker down."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.deliveries import DeliveryPage, Redelivery
from dq.procs import wait_until
from jobs.settings import Settings
from jobs.view import JobEvent
from tests.conftest import DelivererFactory, WorkerFactory, keyed_client
from tests.helpers import wait_for
from tests.webhook_receiver import SECRET, Receiver, Reply

EMULATED = {"DQ_BACKEND": "emulated", "DQ_EMULATED_SECONDS": "0.05"}


@pytest.fixture
def wh_client(s3_settings: Settings, admin_key: str) -> FlaskClient:
    from api import create_app

    app = create_app(s3_settings.with_(webhook_allowlist="127.0.0.1", webhook_secret=SECRET))
    app.testing = True
    return keyed_client(app, admin_key)  # type: ignore[no-any-return]


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
    # progress written, and announced, at every step: progress events however fast the machine
    start_worker(
        model="tiny-broken",
        DQ_BACKEND="tests.support:raising_backend",
        DQ_PROGRESS_INTERVAL_S="0",
        DQ_PROGRESS_EVENT_INTERVAL_S="0",
    )
    deliverer = start_deliverer()
    hook = {
        "webhook": receiver.url + "/hooks/dq?source=tests",
        "webhook_events_filter": ["started", "progress", "succeeded", "failed"],
    }
    ok_ids = [submit(wh_client, model="tiny-broken", num_inference_steps=8, seed=i, **hook) for i in range(2)]
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
        for body in bodies:  # as the OpenAPI document's webhooks: section says
            JobEvent.model_validate(body)
        types = [b["type"] for b in bodies]
        ending = "job.succeeded" if job_id in ok_ids else "job.failed"
        assert final["status"] == ending[4:]
        progress = [b["data"]["progress"]["step"] for b in bodies if b["type"] == "job.progress"]
        expected = list(range(1, 8)) if job_id in ok_ids else [1, 2]  # every step but the last; 2 explodes
        assert types[0] == "job.started" and types[-1] == ending, types
        assert set(types[1:-1]) == {"job.progress"} and progress == expected, types
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
    records = DeliveryPage.model_validate(wh_client.get(f"/v1/jobs/{ok_ids[0]}/deliveries").get_json()).data
    records = [r.model_dump(mode="json") for r in records]
    assert [r["delivery_id"] for r in records] == [f"msg_{ok_ids[0]}_{n}" for n in range(1, len(records) + 1)]
    assert {(r["attempt"], r["status_code"], r["outcome"], r["error"]) for r in records} == {
        (1, 204, "delivered", None)
    }

    # redelivery sends the succeeded message again, under the same webhook-id
    last_id = records[-1]["delivery_id"]
    response = wh_client.post(f"/v1/jobs/{ok_ids[0]}/deliveries/{last_id}/redeliver")
    assert response.status_code == 202 and Redelivery.model_validate(response.get_json()).delivery_id == last_id
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
    # each phase lasts until the first job's head message has been tried in it:
    # 500s, then a receiver that never answers, then nothing listening
    first_tried = attempts_of(wh_client, ids[0])
    wait_until(lambda: any(r["status_code"] == 500 for r in first_tried()), 30, "an attempt answered 500")
    receiver.mode = "hang"
    wait_until(lambda: any("timeout" in (r["error"] or "") for r in first_tried()), 30, "an attempt timed out")
    receiver.stop()
    wait_until(lambda: any("connection failed" in (r["error"] or "") for r in first_tried()), 30, "a refused one")
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
    everything = wh_client.get(f"/v1/jobs/{ids[0]}/deliveries").get_json()
    DeliveryPage.model_validate(everything)  # retrying, timed out, refused connections: as documented
    records = [r for r in everything["data"] if r["delivery_id"] == first]
    assert [r["attempt"] for r in records] == list(range(1, len(records) + 1))
    assert [r["outcome"] for r in records] == ["retrying"] * (len(records) - 1) + ["delivered"]
    codes = [r["status_code"] for r in records]
    assert 500 in codes and None in codes and codes[-1] == 204
    errors = " | ".join(r["error"] for r in records if r["status_code"] is None)
    assert "timeout" in errors and "connection failed" in errors, errors


def attempts_of(client: FlaskClient, job_id: str) -> Callable[[], list[dict[str, Any]]]:
    return lambda: client.get(f"/v1/jobs/{job_id}/deliveries").get_json()["data"]


def test_workers_never_contact_receivers(
    wh_client: FlaskClient, start_worker: WorkerFactory, start_deliverer: DelivererFactory, session_dir: Path
) -> None:
    """Every request a receiver gets comes from ``dq webhooks``: with no deliverer the jobs still
    finish and nothing arrives; a hanging receiver then only holds the deliverer."""
    receiver = Receiver(SECRET, track_peers=True).start()
    try:
        worker = start_worker(**EMULATED)
        ids = [submit(wh_client, webhook=receiver.url, num_inference_steps=5, seed=i) for i in range(10)]
        assert all(wait_for(wh_client, job_id)["status"] == "succeeded" for job_id in ids)
        assert receiver.snapshot() == []  # the worker sent nothing
        receiver.mode = "hang"
        deliverer = start_deliverer(DQ_WEBHOOK_TIMEOUT_S="0.5")
        more = [submit(wh_client, webhook=receiver.url, num_inference_steps=5, seed=i) for i in range(10)]
        assert all(wait_for(wh_client, job_id)["status"] == "succeeded" for job_id in more)
        receiver.wait_until(lambda: len(receiver.snapshot()) >= 4, 30, "attempts at the hanging receiver")
        peers = {r.peer_pid for r in receiver.snapshot()}
        assert peers == {deliverer.pid} and worker.pid not in peers
    finally:
        receiver.close()


def test_the_default_filter_leaves_out_progress(
    wh_client: FlaskClient, start_worker: WorkerFactory, start_deliverer: DelivererFactory, receiver: Receiver
) -> None:
    start_worker(**EMULATED, DQ_PROGRESS_INTERVAL_S="0", DQ_PROGRESS_EVENT_INTERVAL_S="0")
    start_deliverer()
    default = submit(wh_client, webhook=receiver.url, num_inference_steps=10)
    everything = submit(
        wh_client,
        webhook=receiver.url,
        num_inference_steps=10,
        webhook_events_filter=["started", "progress", "succeeded", "failed", "canceled"],
    )
    receiver.wait_until(terminal_delivered(receiver, [default, everything]), 30, "both terminal events")
    assert [b["type"] for b in receiver.delivered_for(default)] == ["job.started", "job.succeeded"]
    progress = [b for b in receiver.delivered_for(everything) if b["type"] == "job.progress"]
    assert [b["data"]["progress"]["step"] for b in progress] == list(range(1, 10))  # it did emit them


def test_sigterm_lets_the_attempt_in_flight_finish(
    wh_client: FlaskClient, start_deliverer: DelivererFactory, receiver: Receiver
) -> None:
    receiver.script = [Reply(204, delay_s=1.5)]
    deliverer = start_deliverer(DQ_WEBHOOK_TIMEOUT_S="5")
    job_id = submit(wh_client, webhook=receiver.url)
    assert wh_client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200  # its event: job.canceled
    receiver.wait_until(lambda: len(receiver.snapshot()) == 1, 30, "the attempt arriving")
    deliverer.send_signal(signal.SIGTERM)
    assert deliverer.wait(15) == 0
    (record,) = attempts_of(wh_client, job_id)()
    assert (record["status_code"], record["outcome"]) == (204, "delivered") and record["latency_ms"] >= 1400


def test_a_retry_due_during_a_deliverer_restart_is_sent_after_it(
    wh_client: FlaskClient, start_deliverer: DelivererFactory, receiver: Receiver
) -> None:
    receiver.script = [Reply(503)]
    deliverer = start_deliverer(DQ_WEBHOOK_RETRY_SCHEDULE_S="0,1")
    job_id = submit(wh_client, webhook=receiver.url)
    assert wh_client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    wait_until(lambda: len(attempts_of(wh_client, job_id)()) == 1, 30, "the first attempt")
    deliverer.send_signal(signal.SIGTERM)
    assert deliverer.wait(15) == 0
    (first,) = attempts_of(wh_client, job_id)()
    assert first["outcome"] == "retrying"
    due = seconds(first["next_attempt_at"])
    while time.time() < due + 0.5:  # the retry falls due while no deliverer runs
        time.sleep(0.1)
    assert len(receiver.snapshot()) == 1
    start_deliverer(DQ_WEBHOOK_RETRY_SCHEDULE_S="0,1")
    receiver.wait_until(lambda: len(receiver.delivered()) == 1, 30, "the retry after the restart")
    first_request, retry = receiver.snapshot()
    assert first_request.webhook_id == retry.webhook_id == first["delivery_id"]
    assert retry.at >= due and retry.json()["type"] == "job.canceled"
