"""``eta_seconds`` of a queued job (issue 12, part 3): the estimate on plain numbers, and as
the API shows it, from the job's place in the scheduler's order, the serving workers and the
model's moving averages. Its accuracy on a real backlog is measured by ``bench/eta.py``."""

from __future__ import annotations

import redis
from flask.testing import FlaskClient

from jobs.eta import Capacity, eta_seconds, read_capacity
from jobs.keys import Keys
from jobs.workers import WorkerInfo, WorkerRegistry
from tests.helpers import submit


def test_the_estimate_hands_the_calls_ahead_to_the_workers_in_turn() -> None:
    one = Capacity(per_call_s=2.0, storage_s=0.5, workers=1)
    assert eta_seconds(0, one) == 1.0 + 2.0 + 0.5  # its worker frees up, on average, half a call from now
    assert eta_seconds(2, one) == 1.0 + 2 * 2.0 + 2.0 + 0.5
    four = Capacity(per_call_s=1.0, storage_s=0.0, workers=4)
    assert eta_seconds(3, four) == 0.8 + 1.0  # the 4th worker to free up, 4/5 of a call from now
    assert eta_seconds(4, four) == 0.2 + 1.0 + 1.0  # the first to free up, in its second call
    assert eta_seconds(7, four, batch=4) == eta_seconds(1, four)  # 8 jobs of a batch of 4: 2 calls
    assert eta_seconds(5, Capacity(1.0, 0.0, workers=0)) is None  # nobody serves it (yet)
    assert eta_seconds(5, Capacity(0.0, 0.0, workers=2)) is None  # no call measured yet


def test_a_queued_job_carries_its_eta_and_others_none(client: FlaskClient, redis_client: redis.Redis) -> None:
    keys = Keys()
    WorkerRegistry(redis_client, keys).publish(WorkerInfo("w@h", "h", 1, "tiny-sd", "emulated", "", "ready"), 30)
    redis_client.hset(keys.model("tiny-sd"), mapping={"gen_ewma_s": "2.0", "store_ewma_s": "0.25"})
    assert read_capacity(redis_client, keys, "tiny-sd") == Capacity(2.0, 0.25, 1)
    client.post("/v1/models/tiny-sd/pause")  # the jobs stay queued (nobody runs them here anyway)
    jobs = [submit(client, seed=i) for i in range(3)]
    assert [j["queue_position"] for j in jobs] == [0, 1, 2]
    assert [j["eta_seconds"] for j in jobs] == [3.25, 5.25, 7.25]  # 1 + 2 per job ahead + 2 + 0.25
    assert client.get(f"/v1/jobs/{jobs[2]['id']}").get_json()["eta_seconds"] == 7.25
    assert client.post(f"/v1/jobs/{jobs[0]['id']}/cancel").status_code == 200
    assert client.get(f"/v1/jobs/{jobs[0]['id']}").get_json()["eta_seconds"] is None
    assert client.get(f"/v1/jobs/{jobs[2]['id']}").get_json()["eta_seconds"] == 5.25  # one fewer ahead
