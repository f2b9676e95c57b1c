"""One log line per job transition, with job id, model, worker, tenant and timings (issue 12,
part 7); ``DQ_LOG_FORMAT=json`` writes each as one JSON object for log shippers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import redis

from jobs.logs import JsonFormatter, formatter, log_transition
from jobs.settings import Settings
from jobs.store import ANY_TENANT, JobStore, Owner
from tests.conftest import REPO_ROOT

INPUT = {"prompt": "p", "num_inference_steps": 4, "seed": 1}


def transitions(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.dq for r in caplog.records if r.name == "dq.jobs"]  # type: ignore[attr-defined]


def test_every_transition_logs_one_line(redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dq.jobs")
    store = JobStore(redis_client)
    owner = Owner("acme", "k1")
    for job_id in ("a", "b", "c"):
        store.create(job_id, "m", INPUT, owner=owner)
    store.start("a", "m", "nc0-1@host", lease_s=30)
    store.succeed("a", "m", 1, [], generation_seconds=0.5, storage_seconds=0.01)
    store.start("b", "m", "nc2-3@host", lease_s=30)
    store.fail("b", "m", 1, "timeout", "too long")
    store.cancel("c", "m", tenant=ANY_TENANT)
    assert not store.succeed("a", "m", 1, [], generation_seconds=0.5)  # no transition: no line
    lines = transitions(caplog)
    assert [(line["event"], line["job_id"]) for line in lines] == [
        ("created", "a"),
        ("created", "b"),
        ("created", "c"),
        ("started", "a"),
        ("succeeded", "a"),
        ("started", "b"),
        ("failed", "b"),
        ("canceled", "c"),
    ]
    assert all(line["model"] == "m" for line in lines)
    assert lines[0]["tenant"] == "acme" and lines[0]["position"] == 0 and lines[0]["key"] == "k1"
    started, succeeded, failed = lines[3], lines[4], lines[6]
    assert started["worker"] == "nc0-1@host" and started["tenant"] == "acme" and float(started["queue_s"]) >= 0  # type: ignore[arg-type]
    assert succeeded["worker"] == "nc0-1@host" and succeeded["tenant"] == "acme"
    assert succeeded["generation_s"] == 0.5 and succeeded["storage_s"] == 0.01
    assert float(succeeded["total_s"]) >= float(succeeded["run_s"]) >= 0  # type: ignore[arg-type]
    assert failed["error"] == "timeout" and failed["worker"] == "nc2-3@host"
    text = [r.getMessage() for r in caplog.records if r.name == "dq.jobs"]
    assert text[4].startswith("job a succeeded model=m worker=nc0-1@host tenant=acme generation_s=0.5")


def test_json_format_is_one_object_per_line_with_the_fields() -> None:
    record = logging.LogRecord("dq.jobs", logging.INFO, __file__, 1, "job %s done", ("a",), None)
    record.dq = {"event": "succeeded", "job_id": "a", "generation_s": 0.5}
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "job a done" and line["level"] == "info" and line["logger"] == "dq.jobs"
    assert line["event"] == "succeeded" and line["generation_s"] == 0.5 and line["ts"].endswith("+00:00")
    with pytest.raises(ValueError, match="DQ_LOG_FORMAT"):
        formatter("yaml")


def test_dq_log_format_json_makes_every_line_json(settings: Settings) -> None:
    """A process configured from its environment, as ``dq`` entry points are, making transitions."""
    script = (
        "import logging; from jobs.logs import configure_logging; from jobs.settings import Settings;"
        "from jobs.store import JobStore, Owner; from jobs.connections import Role, create_redis;"
        "s = Settings.from_env(); configure_logging(s); store = JobStore(create_redis(s, Role.API));"
        "store.create('j1', 'm', {'prompt': 'p'}, owner=Owner('acme'));"
        "store.start('j1', 'm', 'w@h', lease_s=30); store.succeed('j1', 'm', 1, [], generation_seconds=0.2);"
        "logging.getLogger('dq.other').warning('plain %s', 'too')"
    )
    env = {**os.environ, "DQ_REDIS_URL": settings.redis_url, "DQ_LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line.get("event") for line in lines] == ["created", "started", "succeeded", None]
    assert lines[2]["worker"] == "w@h" and lines[2]["tenant"] == "acme" and lines[2]["generation_s"] == 0.2
    assert lines[3] == {**lines[3], "logger": "dq.other", "level": "warning", "msg": "plain too"}


def test_log_transition_leaves_out_empty_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dq.jobs")
    log_transition("canceled", "x", "m", tenant=None, worker="")
    assert transitions(caplog) == [{"event": "canceled", "job_id": "x", "model": "m"}]
