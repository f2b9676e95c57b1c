"""``dq metrics --cloudwatch``: the scaling signal as CloudWatch PutMetricData calls (issue 12,
part 2). AWS is not reachable here: the calls are checked as built, and printed by a dry run
of the real command against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

import redis

from jobs.cloudwatch import publish, put_metric_data_calls
from jobs.metrics import FleetSnapshot, ModelSnapshot
from jobs.settings import Settings
from jobs.store import JobStore, Owner
from jobs.workers import WorkerInfo, WorkerRegistry
from tests.conftest import REPO_ROOT


def test_the_calls_carry_each_models_signal() -> None:
    workers = [WorkerInfo(f"w{i}", "h", 1, "sdxl", "neuron", "", state) for i, state in enumerate(("busy", "ready"))]
    workers.append(WorkerInfo("w9", "h", 1, "sdxl", "neuron", "", "loading"))
    snapshot = FleetSnapshot(
        1_800_000_000.0, [ModelSnapshot("sdxl", 7, 1_799_999_990.0), ModelSnapshot("sd15")], workers
    )
    (call,) = put_metric_data_calls(snapshot, "DQ")
    assert call["Namespace"] == "DQ"
    data = {(d["MetricName"], d["Dimensions"][0]["Value"]): d for d in call["MetricData"]}
    assert data["BacklogPerReadyWorker", "sdxl"]["Value"] == 3.5  # 7 queued, 2 serving (loading does not count)
    assert data["QueueDepth", "sdxl"] == {
        "MetricName": "QueueDepth",
        "Dimensions": [{"Name": "Model", "Value": "sdxl"}],
        "Timestamp": datetime(2027, 1, 15, 8, 0, tzinfo=timezone.utc),
        "Value": 7.0,
        "Unit": "Count",
    }
    assert data["OldestQueuedAge", "sdxl"]["Value"] == 10.0 and data["OldestQueuedAge", "sdxl"]["Unit"] == "Seconds"
    assert data["ReadyWorkers", "sd15"]["Value"] == 0.0 and data["BacklogPerReadyWorker", "sd15"]["Value"] == 0.0


def test_many_models_split_into_calls_of_at_most_20() -> None:
    snapshot = FleetSnapshot(0.0, [ModelSnapshot(f"m{i}") for i in range(6)], [])
    calls = put_metric_data_calls(snapshot)
    assert [len(c["MetricData"]) for c in calls] == [20, 4]

    class Recorder:  # what boto3's CloudWatch client is given
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def put_metric_data(self, **kwargs: Any) -> None:
            self.calls.append(kwargs)

    recorder = Recorder()
    publish(calls, recorder)
    assert recorder.calls == calls


def test_dq_metrics_dry_run_prints_the_calls(settings: Settings, redis_client: redis.Redis) -> None:
    for i in range(3):
        JobStore(redis_client).create(f"j{i}", "tiny-sd", {"prompt": "p"}, owner=Owner("t"))
    WorkerRegistry(redis_client).publish(WorkerInfo("w@h", "h", 1, "tiny-sd", "emulated", "", "busy"), 30)
    env = {**os.environ, **settings.to_env()}
    env.pop("AWS_ACCESS_KEY_ID", None)  # a dry run needs no credentials

    def dq(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "dq", "metrics", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    figures = dq()
    assert figures["tiny-sd"] == {
        "queue_depth": 3,
        "ready_workers": 1,
        "backlog_per_ready_worker": 3.0,
        "oldest_queued_age_seconds": figures["tiny-sd"]["oldest_queued_age_seconds"],
    }
    calls = dq("--cloudwatch", "--namespace", "Test")
    data = {(d["MetricName"], d["Dimensions"][0]["Value"]): d["Value"] for c in calls for d in c["MetricData"]}
    assert data["BacklogPerReadyWorker", "tiny-sd"] == 3.0 and data["QueueDepth", "tiny-sd"] == 3.0
    assert {c["Namespace"] for c in calls} == {"Test"}
