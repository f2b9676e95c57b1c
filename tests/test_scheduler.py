"""The scheduler against a real Redis, then with real workers: fair share between tenants,
priority and aging, exact queue positions, static-batch packing (with outputs equal to single
runs, and cancel inside a batch), retry with links, dead letters, batch submit, pause/resume."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from PIL import Image, ImageChops

from dq.procs import Service, wait_until
from jobs.keys import celery_queue
from jobs.store import ANY_TENANT, JobStore, Limits, NewJob, Owner
from jobs.submit import new_job_id
from tests.conftest import BUCKET, WorkerFactory
from tests.helpers import s3_keys, submit, wait_for, wait_until_job

INPUT = {"prompt": "p", "num_inference_steps": 4, "seed": 1, "width": 64, "height": 64, "num_images": 1}
UNLIMITED = Limits()


def add(store: JobStore, tenant: str, n: int, priority: str = "normal", model: str = "m") -> list[str]:
    jobs = [NewJob(new_job_id(), INPUT, priority=priority) for _ in range(n)]
    for start in range(0, n, 100):
        results = store.create_many(model, jobs[start : start + 100], owner=Owner(tenant))
        assert all(r.created for r in results)
    return [job.id for job in jobs]


def pick_order(store: JobStore, n: int, model: str = "m") -> list[str]:
    order = []
    for _ in range(n):
        picked = store.pick(model)
        assert len(picked.ids) == 1
        order += picked.ids
    return order


def seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


# -- which job next (the store alone) ----------------------------------------------------------
def test_a_small_tenant_is_served_round_robin_behind_a_big_backlog(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    big = add(store, "bulk", 1000)
    assert pick_order(store, 3) == big[:3]  # the backlog is being served
    small = add(store, "small", 5)
    order = pick_order(store, 12)
    assert order[0] in (small[0], big[3])  # the newcomer's first job: within one slot
    assert [j for j in order if j in small] == small
    assert order.index(small[-1]) <= 9  # five each, alternating
    assert [j for j in order if j in big] == big[3:10]


def test_weights_share_the_workers_in_proportion(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    store.set_weight("gold", 3)
    gold, plain = add(store, "gold", 60), add(store, "plain", 60)
    order = pick_order(store, 40)
    share = sum(1 for j in order if j in gold) / len(order)
    assert 0.7 <= share <= 0.8  # 3 : 1
    assert [j for j in order if j in plain] == plain[: len([j for j in order if j in plain])]  # FIFO per tenant


def test_priority_runs_first_and_queue_positions_are_the_pick_order(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    low = add(store, "a", 2, "low")
    normal = add(store, "a", 3) + add(store, "b", 3)
    high = add(store, "b", 2, "high")
    positions = {j: store.get_with_position(j, tenant=ANY_TENANT)[1] for j in low + normal + high}
    order = pick_order(store, 10)
    assert order[:2] == high and set(order[2:8]) == set(normal) and order[8:] == low
    assert [positions[j] for j in order] == list(range(10))  # exact: what was reported is what ran


def test_aging_promotes_a_starving_low_job(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    (old_low,) = add(store, "a", 1, "low")
    assert store.promote_aged("m", aging_s=60) == []  # not old enough yet
    assert store.promote_aged("m", aging_s=60, now=time.time() + 61) == [old_low]  # low → normal
    normal = add(store, "b", 5)
    assert store.get_with_position(old_low, tenant=ANY_TENANT)[1] == 0  # ahead of fresh normal jobs
    high = add(store, "b", 3, "high")
    assert pick_order(store, 9) == [*high, old_low, *normal]
    assert store.promote_aged("m", aging_s=60, now=time.time() + 200) == []  # picked: nothing left to age


def test_a_batch_pick_takes_compatible_jobs_only(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    owner = Owner("a")
    same = [NewJob(new_job_id(), INPUT, batch_class="x") for _ in range(6)]
    other = NewJob(new_job_id(), INPUT, batch_class="y")
    store.create_many("m", [same[0], other, *same[1:]], owner=owner)
    first = store.pick("m", batch_max=4)
    assert first.ids == [j.id for j in same[:4]] and first.pending == 3
    second = store.pick("m", batch_max=4)
    assert second.ids == [other.id]  # the head, alone: nothing else of its class
    third = store.pick("m", batch_max=4)
    assert third.ids == [j.id for j in same[4:]] and third.pending == 0
    assert store.pick("m", batch_max=4).ids == []


# -- with workers ----------------------------------------------------------------------------------
@pytest.fixture
def acme(tenant_client: Callable[..., FlaskClient]) -> FlaskClient:
    return tenant_client("acme", max_priority="high")


def test_a_small_tenant_behind_a_big_one_starts_within_a_slot_per_worker(
    tenant_client: Callable[..., FlaskClient], start_worker: WorkerFactory
) -> None:
    bulk, small = tenant_client("bulk", rate_limit_per_s=10_000, rate_limit_burst=10_000), tenant_client("small")
    for name in ("w-a", "w-b"):
        start_worker(name=name, DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0.05")
    body = {"prompt": "bulk", "num_inference_steps": 1}
    for _ in range(3):
        response = bulk.post("/v1/jobs/batch", json={"jobs": [body] * 100})
        assert response.status_code == 200 and {i["status"] for i in response.get_json()["data"]} == {202}
    wait_until(lambda: bulk.get("/v1/jobs?status=succeeded&limit=1").get_json()["data"], 30, "the backlog moving")
    submitted = time.time()
    mine = [submit(small, num_inference_steps=1, seed=i)["id"] for i in range(5)]
    first = wait_for(small, mine[0])
    others_started = [
        j
        for j in bulk.get("/v1/jobs?limit=100").get_json()["data"]
        if j["started_at"] and submitted < seconds(j["started_at"]) < seconds(first["started_at"])
    ]
    print(f"\nbulk jobs started between the small tenant's submit and its first start: {len(others_started)}")
    assert len(others_started) <= 2  # one job slot per worker
    assert all(wait_for(small, j)["status"] == "succeeded" for j in mine)


def test_priority_above_the_keys_maximum_is_refused(tenant_client: Callable[..., FlaskClient]) -> None:
    plain = tenant_client("plain")  # max_priority "normal" by default
    response = plain.post("/v1/jobs", json={"prompt": "p", "priority": "high"})
    assert response.status_code == 422 and response.get_json()["errors"][0]["field"] == "priority"
    assert plain.post("/v1/jobs", json={"prompt": "p", "priority": "low"}).get_json()["priority"] == "low"


def test_static_batches_are_packed_and_match_single_runs(
    client: FlaskClient, start_worker: WorkerFactory, s3_service: Service
) -> None:
    """tiny-batch is the tiny model declared as compiled for 4 prompts per call: the worker runs
    4 compatible jobs in one pipeline call; each image equals the same seed run alone."""
    client.post("/v1/models/tiny-batch/pause")  # queue all eight first, so they pack
    batched = [
        submit(client, model="tiny-batch", prompt=f"a pig {i}", num_inference_steps=3, seed=100 + i)["id"]
        for i in range(8)
    ]
    start_worker(model="tiny-batch", name="batcher")
    client.post("/v1/models/tiny-batch/resume")
    jobs = [wait_for(client, j) for j in batched]
    assert all(j["status"] == "succeeded" for j in jobs)
    calls = {j["started_at"][:19] + str(j["metrics"]["generation_seconds"]) for j in jobs}
    assert len({j["metrics"]["generation_seconds"] for j in jobs}) == 2, calls  # two calls of four
    start_worker(model="tiny-sd", name="single")
    for i, job in enumerate(jobs):
        alone = wait_for(client, submit(client, prompt=f"a pig {i}", num_inference_steps=3, seed=100 + i)["id"])
        diff = ImageChops.difference(image(client, job), image(client, alone)).getextrema()
        assert max(high for _, high in diff) <= 2, diff  # batched CPU math: within 2/255 of the single run


def image(client: FlaskClient, job: dict[str, Any]) -> Image.Image:
    import urllib3

    data = urllib3.PoolManager().request("GET", job["outputs"][0]["url"]).data
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_a_member_canceled_inside_a_batch_leaves_it_and_the_rest_finish(
    client: FlaskClient, start_worker: WorkerFactory, s3_service: Service
) -> None:
    client.post("/v1/models/tiny-batch/pause")
    ids = [submit(client, model="tiny-batch", num_inference_steps=20, seed=i)["id"] for i in range(4)]
    start_worker(model="tiny-batch", DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="2", DQ_EMULATED_BATCH_COST="0.4667")
    client.post("/v1/models/tiny-batch/resume")
    wait_until_job(client, ids[1], lambda j: j["status"] == "running" and j["progress"]["step"] >= 2)
    assert client.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 202
    finals = [wait_for(client, j) for j in ids]
    assert [j["status"] for j in finals] == ["succeeded", "canceled", "succeeded", "succeeded"]
    assert finals[1]["outputs"] == [] and s3_keys(s3_service, BUCKET, f"outputs/tiny-batch/{ids[1]}/") == []
    assert finals[1]["progress"]["step"] < 20 and all(len(j["outputs"]) == 1 for j in finals[::2])
    assert len({j["worker"] for j in finals}) == 1 and len({j["started_at"][:21] for j in finals}) <= 2


# -- retry, dead letters, batch submit, pause ------------------------------------------------------
def test_retry_links_both_ways_and_dead_letters_are_listed(client: FlaskClient, start_worker: WorkerFactory) -> None:
    start_worker(model="tiny-broken", DQ_BACKEND="tests.support:raising_backend")
    bad = submit(client, model="tiny-broken", prompt="please explode", num_inference_steps=3)
    good = submit(client, model="tiny-broken", num_inference_steps=2)
    failed = wait_for(client, bad["id"])
    assert failed["status"] == "failed" and wait_for(client, good["id"])["status"] == "succeeded"
    dead = client.get("/v1/jobs?status=failed&error_type=generation_error").get_json()["data"]
    assert [j["id"] for j in dead] == [bad["id"]]
    assert client.get("/v1/jobs?status=failed&error_type=timeout").get_json()["data"] == []
    retried = client.post(f"/v1/jobs/{bad['id']}/retry")
    assert retried.status_code == 202
    retry = retried.get_json()
    assert retry["retry_of"] == bad["id"] and retry["input"] == failed["input"] and retry["id"] != bad["id"]
    assert client.get(f"/v1/jobs/{bad['id']}").get_json()["retried_by"] == retry["id"]
    assert client.post(f"/v1/jobs/{good['id']}/retry").status_code == 409  # succeeded
    queued = submit(client, model="tiny-static")  # no worker: it stays queued
    assert client.post(f"/v1/jobs/{queued['id']}/retry").status_code == 409
    assert client.post("/v1/jobs/nope/retry").status_code == 404
    assert client.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 200
    assert client.post(f"/v1/jobs/{queued['id']}/retry").get_json()["retry_of"] == queued["id"]  # canceled


def test_batch_submit_answers_each_job_as_it_alone_would_have_been(
    tenant_client: Callable[..., FlaskClient], redis_client: redis.Redis
) -> None:
    capped = tenant_client("capped", max_active_jobs=3)
    jobs = [
        {"prompt": "one"},
        {"prompt": ""},  # 422
        {"prompt": "two", "priority": "high"},  # 422: above the key's max_priority
        {"prompt": "three", "width": 64, "height": 64},
        {"prompt": "four"},
        {"prompt": "five", "model": "no-such-model"},  # 422
        {"prompt": "six"},  # 429: the key's quota of 3 is reached
    ]
    response = capped.post("/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert [(d["index"], d["status"]) for d in data] == [
        (0, 202),
        (1, 422),
        (2, 422),
        (3, 202),
        (4, 202),
        (5, 422),
        (6, 429),
    ]
    assert data[1]["error"]["errors"][0]["field"] == "prompt" and data[2]["error"]["errors"][0]["field"] == "priority"
    assert data[6]["error"]["status"] == 429 and data[6]["error"]["retry_after"] >= 1
    assert [d["job"]["input"]["prompt"] for d in data if d["status"] == 202] == ["one", "three", "four"]
    assert redis_client.zcard("dq:jobs") == 3
    assert capped.post("/v1/jobs/batch", json={"jobs": [{"prompt": "x"}] * 101}).status_code == 413
    for bad in ({"jobs": []}, {"jobs": "x"}, {"items": []}, []):
        assert capped.post("/v1/jobs/batch", json=bad).status_code == 422


def test_pause_holds_queued_jobs_and_resume_runs_them(
    client: FlaskClient, acme: FlaskClient, start_worker: WorkerFactory
) -> None:
    start_worker()
    assert acme.post("/v1/models/tiny-sd/pause").status_code == 403  # admins only
    paused = client.post("/v1/models/tiny-sd/pause")
    assert paused.status_code == 200 and paused.get_json()["paused"] is True
    job = submit(client, num_inference_steps=2)
    time.sleep(1.5)  # a ready worker, a pending job: nothing may start while paused
    held = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert (held["status"], held["queue_position"]) == ("queued", 0)
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["data"]}
    assert models["tiny-sd"]["paused"] is True and models["tiny-static"]["paused"] is False
    assert client.post("/v1/models/tiny-sd/resume").get_json()["paused"] is False
    assert wait_for(client, job["id"])["status"] == "succeeded"
    assert client.post("/v1/models/nope/pause").status_code == 404


def test_aging_reaches_the_top_band(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    (aged,) = add(store, "a", 1, "normal")
    assert store.promote_aged("m", aging_s=60, now=time.time() + 61) == [aged]  # normal → high, at its front
    high = add(store, "b", 2, "high")
    assert pick_order(store, 3) == [aged, *high]
    later = add(store, "c", 1, "high")
    assert pick_order(store, 1) == later  # the band's clock went on normally after the promoted job


def test_a_worker_out_of_jobs_listens_a_while_before_returning_to_celery(
    client: FlaskClient, start_worker: WorkerFactory, redis_client: redis.Redis
) -> None:
    """``DQ_DRAIN_IDLE_S``: the token that woke the worker stays unacknowledged (its Celery task
    still runs) while it waits for more; a job arriving meanwhile runs under the same token."""
    start_worker(DQ_DRAIN_IDLE_S="4")

    def held() -> set[bytes]:
        return set(redis_client.hkeys("unacked"))  # kombu's messages delivered, not yet acked

    first = wait_for(client, submit(client, num_inference_steps=2)["id"])
    assert first["status"] == "succeeded"
    token = held()
    assert len(token) == 1  # still draining: listening for the next token
    second = wait_for(client, submit(client, num_inference_steps=2)["id"])
    assert second["status"] == "succeeded" and held() == token  # no new Celery delivery
    wait_until(lambda: not held(), 15, "the drain to end and ack its token")
    assert redis_client.llen(celery_queue("tiny-sd")) == 0
