"""Job state transitions against a real Redis: atomic, fenced, terminal states final."""

from __future__ import annotations

import threading

import redis

from jobs.keys import Keys, celery_queue
from jobs.models import JobStatus
from jobs.store import ANY_TENANT, JobStore, Owner

OWNER = Owner("t1", "k1")

INPUT = {"prompt": "p", "num_inference_steps": 4, "seed": 1}


def make(store: JobStore, job_id: str, model: str = "m", **kw: object) -> None:
    assert store.create(job_id, model, INPUT, owner=OWNER, **kw).created  # type: ignore[arg-type]


def test_keys_are_namespaced() -> None:
    k = Keys("dq")
    assert k.job("abc") == "dq:job:abc"
    assert k.jobs() == "dq:jobs"
    assert k.jobs_by_status("queued") == "dq:jobs:queued"
    assert k.pending("tiny-sd") == "dq:pending:tiny-sd"
    assert k.worker("w1") == "dq:worker:w1"
    assert k.idempotency("t", "key").startswith("dq:idem:") and len(k.idempotency("t", "key")) == len("dq:idem:") + 64
    assert k.idempotency("t", "key") != k.idempotency("u", "key")  # per tenant
    assert celery_queue("tiny-sd") == "gen.tiny-sd"


def test_create_start_progress_succeed(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    make(store, "j1")
    job = store.get("j1", tenant=ANY_TENANT)
    assert job is not None and job.status is JobStatus.QUEUED and job.progress_total == 4
    claim = store.start("j1", "m", "w1", lease_s=30)
    assert claim.started and claim.attempt == 1 and claim.input == INPUT
    assert store.progress("j1", 1, 2, lease_s=30) == "ok"
    assert store.succeed("j1", "m", 1, [{"key": "k"}], generation_seconds=0.5)
    job = store.get("j1", tenant=ANY_TENANT)
    assert job is not None
    assert (
        job.status is JobStatus.SUCCEEDED and job.outputs == [{"key": "k"}] and job.progress_step == 4
    )  # succeeded: all steps done
    assert job.started_at is not None and job.completed_at is not None and job.completed_at >= job.started_at
    assert redis_client.zscore("dq:jobs:succeeded", "j1") is not None
    assert redis_client.zscore("dq:jobs:running", "j1") is None


def test_terminal_state_is_final(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    make(store, "j1")
    store.start("j1", "m", "w1", lease_s=30)
    assert store.fail("j1", "m", 1, "generation_error", "boom")
    assert not store.succeed("j1", "m", 1, [], generation_seconds=1.0)
    second = store.start("j1", "m", "w2", lease_s=30)
    assert not second.started and second.status == "failed"
    job = store.get("j1", tenant=ANY_TENANT)
    assert (
        job is not None
        and job.status is JobStatus.FAILED
        and job.error == {"type": "generation_error", "message": "boom"}
    )


def test_only_one_of_two_racing_starts_wins(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    make(store, "j1")
    results = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        results.append(
            JobStore(redis.Redis(connection_pool=redis_client.connection_pool)).start("j1", "m", f"w{i}", lease_s=30)
        )

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.started for r in results) == 1


def test_stale_attempt_is_fenced_out(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    make(store, "j1")
    store.start("j1", "m", "w1", lease_s=30)
    # the reconciler hands the job to a second attempt (simulated: back to queued)
    redis_client.hset("dq:job:j1", "status", "queued")
    assert store.start("j1", "m", "w2", lease_s=30).attempt == 2
    assert store.progress("j1", 1, 3, lease_s=30) == "lost"
    assert not store.succeed("j1", "m", 1, [{"key": "stale"}], generation_seconds=1)
    assert store.succeed("j1", "m", 2, [{"key": "fresh"}], generation_seconds=1)
    job = store.get("j1", tenant=ANY_TENANT)
    assert job is not None and job.outputs == [{"key": "fresh"}] and job.worker == "w2"


def test_start_after_max_attempts_fails_the_job(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    make(store, "j1")
    for attempt in (1, 2, 3):
        assert store.start("j1", "m", "w", lease_s=30, max_attempts=3).attempt == attempt
        redis_client.hset("dq:job:j1", "status", "queued")
    claim = store.start("j1", "m", "w", lease_s=30, max_attempts=3)
    assert claim.status == "max_attempts"
    job = store.get("j1", tenant=ANY_TENANT)
    assert job is not None and job.status is JobStatus.FAILED and job.error is not None
    assert job.error["type"] == "max_attempts"


def test_cancel_request_is_seen_by_progress(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    make(store, "j1")
    store.start("j1", "m", "w1", lease_s=30)
    redis_client.hset("dq:job:j1", "cancel_requested", "1")
    assert store.progress("j1", 1, 1, lease_s=30) == "cancel"
    assert store.cancel_running("j1", "m", 1)
    job = store.get("j1", tenant=ANY_TENANT)
    assert job is not None and job.status is JobStatus.CANCELED


def test_idempotency_returns_the_original(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    first = store.create("j1", "m", INPUT, owner=OWNER, idempotency_key="k", request_hash="h1")
    again = store.create("j2", "m", INPUT, owner=OWNER, idempotency_key="k", request_hash="h1")
    other = store.create("j3", "m", INPUT, owner=OWNER, idempotency_key="k", request_hash="h2")
    assert first.created and not again.created and not other.created
    assert again.job_id == "j1" and again.request_hash == "h1"
    assert other.job_id == "j1" and other.request_hash == "h1"
    assert store.get("j2", tenant=ANY_TENANT) is None and store.get("j3", tenant=ANY_TENANT) is None
    assert 0 < redis_client.ttl(Keys().idempotency(OWNER.tenant, "k")) <= 86_400


def test_queue_position_counts_down(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    for i in range(4):
        make(store, f"j{i}")
    assert [store.get_with_position(f"j{i}", tenant=ANY_TENANT)[1] for i in range(4)] == [0, 1, 2, 3]
    store.start("j0", "m", "w", lease_s=30)
    assert store.get_with_position("j3", tenant=ANY_TENANT)[1] == 2
    assert store.get_with_position("j0", tenant=ANY_TENANT)[1] is None
    assert store.queue_depth("m") == 3


def test_list_is_newest_first_with_cursor_and_filter(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    for i in range(5):
        make(store, f"j{i}")
    store.start("j1", "m", "w", lease_s=30)
    page = store.page(tenant=ANY_TENANT, limit=2)
    assert [j.id for j in page.jobs] == ["j4", "j3"] and page.next_cursor is not None
    page2 = store.page(tenant=ANY_TENANT, limit=2, cursor=int(page.next_cursor))
    assert [j.id for j in page2.jobs] == ["j2", "j1"]
    page3 = store.page(tenant=ANY_TENANT, limit=2, cursor=int(page2.next_cursor or 0))
    assert [j.id for j in page3.jobs] == ["j0"] and page3.next_cursor is None
    running = store.page(tenant=ANY_TENANT, status=JobStatus.RUNNING)
    assert [j.id for j in running.jobs] == ["j1"]
