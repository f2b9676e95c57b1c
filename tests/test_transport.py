"""The broker message the job store writes is the one Celery itself would publish."""

from __future__ import annotations

import base64
import json

import redis

from jobs.settings import Settings
from jobs.transport import GENERATE_TASK, make_celery, task_message


def test_message_matches_what_celery_publishes(settings: Settings, redis_client: redis.Redis) -> None:
    app = make_celery(settings)
    app.send_task(GENERATE_TASK, args=["job-1", "tiny-sd"], queue="gen.tiny-sd", ignore_result=True)
    theirs = json.loads(redis_client.rpop("gen.tiny-sd"))  # type: ignore[arg-type]
    ours = json.loads(task_message("job-1", "tiny-sd"))
    assert ours.keys() == theirs.keys()
    assert ours["headers"].keys() == theirs["headers"].keys()
    assert ours["properties"].keys() == theirs["properties"].keys() - {"reply_to"}  # results are ignored
    for name in ("task", "retries", "timelimit", "argsrepr", "kwargsrepr", "ignore_result", "lang"):
        assert ours["headers"][name] == theirs["headers"][name], name
    for name in ("delivery_info", "priority", "body_encoding", "delivery_mode"):
        assert ours["properties"][name] == theirs["properties"][name], name
    assert ours["content-type"] == theirs["content-type"]
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(theirs["body"]))
    assert ours["headers"]["id"] != json.loads(task_message("job-1", "tiny-sd"))["headers"]["id"]
    app.close()


def test_create_writes_the_job_and_its_message_together(settings: Settings, redis_client: redis.Redis) -> None:
    from jobs.store import JobStore, Owner

    result = JobStore(redis_client).create("j9", "tiny-sd", {"prompt": "p", "num_inference_steps": 2}, owner=Owner("t"))
    assert result.created and result.queue_position == 0 and result.record is not None
    assert result.record.status.value == "queued" and result.record.seq == 1
    (raw,) = redis_client.lrange("gen.tiny-sd", 0, -1)
    body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    assert body[0] == ["j9", "tiny-sd"]
