"""``GET /metrics``: the fleet as Redis holds it (queues, workers, job outcomes and phase
histograms counted by the transition scripts, webhooks) and this API's requests per route.

The collector's logic is tested on plain snapshots; the counts on a real Redis through the
store's scripts; the whole path with a real worker process running real jobs, reading the
scrape as Prometheus would (``text_string_to_metric_families``)."""

from __future__ import annotations

import time
from typing import Any

import redis
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dq.procs import wait_until
from jobs.keys import Keys
from jobs.metrics import (
    FleetSnapshot,
    ModelSnapshot,
    backlog_per_ready_worker,
    fleet_families,
    model_duty_cycle,
    read_fleet,
)
from jobs.stats import BUCKETS_S, JOB_PHASES, job_outcome, parse_stats
from jobs.store import ANY_TENANT, JobStore, Owner
from jobs.workers import WorkerInfo
from tests.conftest import WorkerFactory
from tests.helpers import submit, wait_for
from webhooks.outbox import Outbox, PendingMessage
from worker.liveness import Activity, duty_cycle

OWNER = Owner("t1", "k1")
INPUT = {"prompt": "p", "num_inference_steps": 4, "seed": 1}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) → value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def worker(name: str, model: str, state: str, duty: float = 0.0, **more: Any) -> WorkerInfo:
    return WorkerInfo(name, "h", 1, model, "tiny", "", state, duty_cycle=duty, **more)


class Fixed(Collector):
    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Any:
        return fleet_families(self.snapshot)


def exposition(snapshot: FleetSnapshot) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(snapshot))
    return samples(generate_latest(registry).decode())


# -- the collector's logic, on plain data ------------------------------------------------
def test_backlog_per_ready_worker_counts_a_backlog_with_no_worker_as_itself() -> None:
    assert backlog_per_ready_worker(12, 4) == 3.0
    assert backlog_per_ready_worker(5, 0) == 5.0  # scale from zero: the signal is not 0 or infinite
    assert backlog_per_ready_worker(0, 3) == 0.0


def test_duty_cycle_is_the_busy_share_of_the_window() -> None:
    assert duty_cycle([(10.0, 40.0)], now=70.0, since=10.0) == 0.5
    assert duty_cycle([(0.0, 20.0), (50.0, 70.0)], now=70.0, since=10.0) == 0.5  # clipped to the window
    assert duty_cycle([], now=5.0, since=5.0) == 0.0
    workers = [worker("a", "m", "busy", 1.0), worker("b", "m", "ready", 0.5), worker("c", "m", "loading", 0.0)]
    assert model_duty_cycle(workers) == 0.75  # the serving workers only


def test_activity_publishes_busy_time_and_the_call_in_progress() -> None:
    clock = iter([0.0, 10.0, 25.0, 30.0, 40.0]).__next__
    activity = Activity(window_s=60.0, clock=clock)  # born at 0
    activity.begin()  # 10
    activity.end()  # 25: 15 s busy
    activity.begin()  # 30
    info = worker("a", "m", "busy")
    activity.fill(info)  # 40: 15 + 10 s busy of 40
    assert info.busy_since == 30.0 and info.busy_seconds == 25.0 and info.duty_cycle == 0.625


def test_parse_stats_makes_cumulative_buckets_and_every_phase_appears() -> None:
    raw = {"c:succeeded": "3", "c:failed:timeout": "1", "h:generation:1": "2", "h:generation:7": "1"}
    raw["h:generation:sum"] = "1.02"
    stats = parse_stats(raw, tuple(JOB_PHASES))
    assert stats.counters == {"succeeded": 3, "failed:timeout": 1}
    generation = stats.histograms["generation"]
    assert generation.buckets[0] == (BUCKETS_S[0], 2) and generation.buckets[6] == (BUCKETS_S[6], 3)
    assert generation.buckets[-1] == (float("inf"), 3) and generation.count == 3 and generation.sum_s == 1.02
    assert stats.histograms["queue_wait"].count == 0  # nothing observed yet: still a series


def test_job_outcomes() -> None:
    assert job_outcome("succeeded") == "succeeded" and job_outcome("canceled") == "canceled"
    assert job_outcome("failed", "expired") == "expired" and job_outcome("failed", "timeout") == "failed:timeout"


def test_fleet_families_from_a_snapshot() -> None:
    stats = parse_stats({"c:succeeded": "4", "c:failed:generation_error": "1", "c:expired": "2"}, tuple(JOB_PHASES))
    snapshot = FleetSnapshot(
        now=1000.0,
        models=[ModelSnapshot("m", 6, 940.0, 0.5, False, stats), ModelSnapshot("idle")],
        workers=[
            worker("a@h", "m", "busy", 0.9, jobs_done=7, busy_seconds=3.5, restarts=1),
            worker("b@h", "m", "ready", 0.1),
            worker("c@h", "m", "loading"),
        ],
        webhook_backlog=3,
    )
    found = exposition(snapshot)
    assert value(found, "dq_queue_depth", model="m") == 6
    assert value(found, "dq_queue_oldest_age_seconds", model="m") == 60.0
    assert value(found, "dq_queue_oldest_age_seconds", model="idle") == 0.0
    assert value(found, "dq_backlog_per_ready_worker", model="m") == 3.0  # 6 queued / 2 serving
    assert value(found, "dq_workers", model="m", state="busy") == 1
    assert value(found, "dq_workers", model="m", state="loading") == 1
    assert value(found, "dq_workers", model="idle", state="ready") == 0
    assert value(found, "dq_duty_cycle", model="m") == 0.5
    assert value(found, "dq_jobs_finished_total", model="m", outcome="succeeded", error_type="") == 4
    assert value(found, "dq_jobs_finished_total", model="m", outcome="failed", error_type="generation_error") == 1
    assert value(found, "dq_jobs_finished_total", model="m", outcome="expired", error_type="") == 2
    assert value(found, "dq_job_generation_seconds_count", model="m") == 0
    assert value(found, "dq_worker_jobs_total", worker="a@h", model="m") == 7
    assert value(found, "dq_worker_generation_seconds_total", worker="a@h", model="m") == 3.5
    assert value(found, "dq_worker_restarts_total", worker="a@h", model="m") == 1
    assert value(found, "dq_webhook_backlog_jobs") == 3
    names = {name for name, _ in found}
    assert all(name.startswith("dq_") for name in names)
    labels = {label for _, pairs in found for label, _ in pairs}
    assert labels <= {"model", "state", "outcome", "error_type", "worker", "le"}  # bounded: no ids, no prompts


# -- the counts, made by the store's scripts on a real Redis ------------------------------------
def test_transitions_count_outcomes_and_phase_times(redis_client: redis.Redis) -> None:
    keys = Keys()
    store = JobStore(redis_client, keys)
    for job_id in ("a", "b", "c", "d"):
        assert store.create(job_id, "m", INPUT, owner=OWNER).created
    assert store.start("a", "m", "w", lease_s=30).started
    assert store.succeed("a", "m", 1, [], generation_seconds=0.3, storage_seconds=0.02)
    assert store.start("b", "m", "w", lease_s=30).started
    assert store.fail("b", "m", 1, "timeout", "too long")
    assert store.cancel("c", "m", tenant=ANY_TENANT).value == "canceled"
    assert store.fail_queued("d", "m", "expired", "waited too long")

    snapshot = read_fleet(redis_client, keys, ["m"], time.time())
    (model,) = snapshot.models
    assert model.stats.counters == {"succeeded": 1, "failed:timeout": 1, "canceled": 1, "expired": 1}
    hist = model.stats.histograms
    assert hist["queue_wait"].count == 2  # a and b started
    assert hist["generation"].count == 1 and hist["generation"].sum_s == 0.3
    assert dict(hist["generation"].buckets)[0.25] == 0 and dict(hist["generation"].buckets)[0.5] == 1
    assert hist["storage"].count == 1 and hist["end_to_end"].count == 1
    assert model.queue_depth == 0 and model.oldest_queued_at is None


def test_oldest_queued_job_survives_promotion_and_leaves_when_picked(redis_client: redis.Redis) -> None:
    keys = Keys()
    store = JobStore(redis_client, keys)
    store.create("old", "m", INPUT, owner=OWNER, priority="low", now=100.0)
    store.create("new", "m", INPUT, owner=OWNER, priority="high", now=200.0)
    assert store.promote_aged("m", aging_s=0, now=300.0) == ["old"]  # low → normal: it keeps its age
    snapshot = read_fleet(redis_client, keys, ["m"], 400.0)
    assert snapshot.models[0].oldest_queued_at == 100.0 and snapshot.models[0].queue_depth == 2
    assert store.pick("m").ids == ["new"]
    assert read_fleet(redis_client, keys, ["m"], 400.0).models[0].oldest_queued_at == 100.0
    assert store.pick("m").ids == ["old"]
    assert read_fleet(redis_client, keys, ["m"], 400.0).models[0].oldest_queued_at is None


def test_webhook_settles_count_outcomes_and_delivery_latency(redis_client: redis.Redis) -> None:
    keys = Keys()
    store = JobStore(redis_client, keys, progress_event_interval_s=0.0)
    store.create("a", "m", INPUT, owner=OWNER, webhook="http://127.0.0.1:9/hook")
    store.start("a", "m", "w", lease_s=30)
    outbox = Outbox(redis_client, keys)
    head = outbox.head("a")
    assert isinstance(head, PendingMessage)
    now = time.time()
    outbox.settle(head, {"outcome": "retrying"}, final=False, now=now, next_due=now)
    outbox.settle(head, {"outcome": "delivered"}, final=True, now=now, delivery_s=1.5)
    webhooks = read_fleet(redis_client, keys, [], now).webhooks
    assert webhooks.counters == {"retrying": 1, "delivered": 1}
    assert webhooks.histograms["delivery"].count == 1 and webhooks.histograms["delivery"].sum_s == 1.5


# -- the route -----------------------------------------------------------------------------
def test_metrics_need_an_admin_key(app: Any, tenant_client: Any) -> None:
    anonymous = app.test_client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous.mimetype == "application/problem+json"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert tenant_client("acme").get("/metrics").status_code == 403


def test_one_scrape_shows_real_jobs_workers_and_requests(client: FlaskClient, start_worker: WorkerFactory) -> None:
    start_worker()
    before = scrape(client)
    done = [wait_for(client, submit(client, num_inference_steps=2)["id"]) for _ in range(3)]
    assert [job["status"] for job in done] == ["succeeded"] * 3
    client.post("/v1/models/tiny-static/pause")  # no worker there: this job stays queued, then is canceled
    queued = submit(client, model="tiny-static", num_inference_steps=2)
    after_submit = scrape(client)
    assert value(after_submit, "dq_queue_depth", model="tiny-static") == 1
    assert value(after_submit, "dq_queue_oldest_age_seconds", model="tiny-static") >= 0
    assert value(after_submit, "dq_backlog_per_ready_worker", model="tiny-static") == 1  # no worker: the backlog
    assert client.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 200
    client.post("/v1/models/tiny-static/resume")
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("dq_jobs_finished_total", model="tiny-sd", outcome="succeeded", error_type="") == 3
    assert moved("dq_jobs_finished_total", model="tiny-static", outcome="canceled", error_type="") == 1
    for phase in JOB_PHASES:
        assert moved(f"dq_job_{phase}_seconds_count", model="tiny-sd") == 3, phase
        assert moved(f"dq_job_{phase}_seconds_bucket", model="tiny-sd", le="+Inf") == 3, phase
    assert moved("dq_job_generation_seconds_sum", model="tiny-sd") > 0
    assert value(after, "dq_queue_depth", model="tiny-static") == 0
    serving = sum(value(after, "dq_workers", model="tiny-sd", state=s) for s in ("ready", "busy"))
    assert serving == 1 and value(after, "dq_backlog_per_ready_worker", model="tiny-sd") == 0
    assert value(after, "dq_generation_ewma_seconds", model="tiny-sd") > 0
    (name,) = {dict(labels)["worker"] for n, labels in after if n == "dq_worker_jobs_total"}
    # what a worker adds comes with its heartbeat (published as it turns ready: wait for it)
    wait_until(lambda: value(scrape(client), "dq_worker_jobs_total", worker=name, model="tiny-sd") == 3, 10, name)
    assert value(scrape(client), "dq_worker_generation_seconds_total", worker=name, model="tiny-sd") > 0
    # this API's own requests, per route rule and status
    assert moved("dq_http_requests_total", route="/v1/jobs", method="POST", status="202") == 4
    assert moved("dq_http_request_duration_seconds_count", route="/v1/jobs", method="POST", status="202") == 4
    assert moved("dq_http_requests_total", route="/metrics", method="GET", status="200") == 2  # not itself yet
    assert moved("dq_http_requests_total", route="/v1/jobs/<jobid:job_id>/cancel", method="POST", status="200") == 1


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain", response.get_data(as_text=True)
    return samples(response.get_data(as_text=True))
