"""The token the job store writes is the message Celery itself would publish, and a job's
creation leaves one for the workers."""

from __future__ import annotations

import base64
import json

import redis

from jobs.settings import Settings
from jobs.transport import WORK_TASK, make_celery, work_message


def test_message_matches_what_celery_publishes(settings: Settings, redis_client: redis.Redis) -> None:
    app = make_celery(settings)
    app.send_task(WORK_TASK, args=["tiny-sd"], queue="gen.tiny-sd", ignore_result=True)
    theirs = json.loads(redis_client.rpop("gen.tiny-sd"))  # type: ignore[arg-type]
    ours = json.loads(work_message("tiny-sd"))
    assert ours.keys() == theirs.keys()
    assert ours["headers"].keys() == theirs["headers"].keys()
    assert ours["properties"].keys() == theirs["properties"].keys() - {"reply_to"}  # results are ignored
    for name in ("task", "retries", "timelimit", "argsrepr", "kwargsrepr", "ignore_result", "lang"):
        assert ours["headers"][name] == theirs["headers"][name], name
    for name in ("delivery_info", "priority", "body_encoding", "delivery_mode"):
        assert ours["properties"][name] == theirs["properties"][name], name
    assert ours["content-type"] == theirs["content-type"]
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(theirs["body"]))
    assert ours["headers"]["id"] != json.loads(work_message("tiny-sd"))["headers"]["id"]
    app.close()


def test_create_leaves_a_token_for_the_workers(settings: Settings, redis_client: redis.Redis) -> None:
    from jobs.store import JobStore, Owner

    store = JobStore(redis_client)
    for i in range(5):
        result = store.create(f"j{i}", "tiny-sd", {"prompt": "p", "num_inference_steps": 2}, owner=Owner("t"))
        assert result.created and result.queue_position == i and result.record is not None
    assert result.record.status.value == "queued" and result.record.seq == 5
    tokens = redis_client.lrange("gen.tiny-sd", 0, -1)
    assert len(tokens) == 2  # at most TOKENS wait: each wakes one idle worker, which then drains
    assert json.loads(base64.b64decode(json.loads(tokens[0])["body"]))[0] == ["tiny-sd"]
    redis_client.delete("gen.tiny-sd")  # lost tokens (a killed worker, a deleted message) …
    assert store.wake("tiny-sd") and redis_client.llen("gen.tiny-sd") == 1  # … are restored
