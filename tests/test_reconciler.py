"""The reconciler against a real Redis: expired leases, timeouts, TTLs, one leader at a time."""

from __future__ import annotations

import time

import redis

from jobs.models import JobStatus
from jobs.reconciler import Reconciler
from jobs.settings import Settings
from jobs.store import ANY_TENANT, JobStore, Owner


def make(settings: Settings, client: redis.Redis, owner: str = "r1") -> tuple[JobStore, Reconciler]:
    store = JobStore(client)
    return store, Reconciler(store, owner, lease_s=1.0)


def add(store: JobStore, job_id: str, ttl: int = 3600, timeout: int = 600) -> None:
    store.create(
        job_id,
        "m",
        owner=Owner("default"),
        job_input={"prompt": "p", "num_inference_steps": 4, "ttl_seconds": ttl, "timeout_seconds": timeout},
    )


def test_expired_lease_requeues_and_republishes(settings: Settings, redis_client: redis.Redis) -> None:
    store, reconciler = make(settings, redis_client)
    add(store, "j1")
    add(store, "j2")
    assert store.pick("m").ids == ["j1"]
    assert store.start("j1", "m", "dead-worker", lease_s=1).attempt == 1
    assert reconciler.tick(now=time.time()).requeued == []  # lease still live
    redis_client.delete("gen.m")  # the tokens: taken by workers that then died
    report = reconciler.tick(now=time.time() + 5)
    assert report.requeued == ["j1"]
    job, position = store.get_with_position("j1", tenant=ANY_TENANT)
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 1 and job.worker is None
    assert position == 0  # back in its place, ahead of j2
    assert redis_client.llen("gen.m") == 1  # a token again, for the next idle worker
    assert store.pick("m").ids == ["j1"]
    assert store.start("j1", "m", "w2", lease_s=30).attempt == 2


def test_requeue_respects_a_pending_cancel(settings: Settings, redis_client: redis.Redis) -> None:
    store, reconciler = make(settings, redis_client)
    add(store, "j1")
    store.start("j1", "m", "w", lease_s=1)
    assert store.cancel("j1", "m", tenant=ANY_TENANT) == "cancel_requested"
    report = reconciler.tick(now=time.time() + 5)
    assert report.canceled == ["j1"] and report.requeued == []
    job = store.get("j1", tenant=ANY_TENANT)
    assert job is not None and job.status is JobStatus.CANCELED


def test_timeout_fails_a_running_job(settings: Settings, redis_client: redis.Redis) -> None:
    store, reconciler = make(settings, redis_client)
    add(store, "j1", timeout=10)
    store.start("j1", "m", "w", lease_s=3600)
    assert reconciler.tick(now=time.time() + 5).timed_out == []
    assert reconciler.tick(now=time.time() + 12).timed_out == ["j1"]
    job = store.get("j1", tenant=ANY_TENANT)
    assert job is not None and job.status is JobStatus.FAILED and job.error is not None
    assert job.error["type"] == "timeout"


def test_ttl_expires_queued_jobs(settings: Settings, redis_client: redis.Redis) -> None:
    store, reconciler = make(settings, redis_client)
    add(store, "short", ttl=10)
    add(store, "long", ttl=3600)
    report = reconciler.tick(now=time.time() + 60)
    assert report.expired == ["short"]
    short, long_ = store.get("short", tenant=ANY_TENANT), store.get("long", tenant=ANY_TENANT)
    assert short is not None and short.status is JobStatus.FAILED and short.error is not None
    assert short.error["type"] == "expired" and "ttl_seconds=10" in short.error["message"]
    assert long_ is not None and long_.status is JobStatus.QUEUED
    assert store.queue_depth("m") == 1


def test_one_leader_at_a_time(settings: Settings, redis_client: redis.Redis) -> None:
    _, first = make(settings, redis_client, "r1")
    _, second = make(settings, redis_client, "r2")
    assert first.lead() and not second.lead() and first.lead()
    redis_client.delete("dq:reconciler")  # the leader died and its lock expired
    assert second.lead() and not first.lead()
