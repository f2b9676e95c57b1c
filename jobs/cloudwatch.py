"""The scaling signal for AWS: the fleet's figures as CloudWatch ``PutMetricData`` calls.

``dq metrics --cloudwatch`` prints them (a dry run); with ``--publish`` it sends them with
boto3 (credentials and region from boto3's standard chain), once or every ``--interval``
seconds. An Auto Scaling group of inf2 instances then scales on ``BacklogPerReadyWorker`` by
target tracking, and from zero on a step-scaling alarm on ``QueueDepth`` (docs/operations.md).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Protocol

from jobs.metrics import FleetSnapshot, scaling_figures

NAMESPACE = "DiffusionQueue"
# CloudWatch metric → (``scaling_figures`` field, unit)
FIGURES = {
    "BacklogPerReadyWorker": ("backlog_per_ready_worker", "None"),
    "QueueDepth": ("queue_depth", "Count"),
    "ReadyWorkers": ("ready_workers", "Count"),
    "OldestQueuedAge": ("oldest_queued_age_seconds", "Seconds"),
}
MAX_DATA_PER_CALL = 20  # CloudWatch's limit was 20 per call for years (1000 now): stay under both


class CloudWatchClient(Protocol):
    def put_metric_data(self, **kwargs: Any) -> Any: ...


def metric_data(snapshot: FleetSnapshot) -> list[dict[str, Any]]:
    """One datum per model and figure, dimension ``Model``, at the snapshot's time."""
    at = datetime.fromtimestamp(snapshot.now, timezone.utc)
    data = []
    for model, figures in scaling_figures(snapshot).items():
        for name, (field, unit) in FIGURES.items():
            datum = {"MetricName": name, "Dimensions": [{"Name": "Model", "Value": model}], "Timestamp": at}
            data.append({**datum, "Value": float(figures[field]), "Unit": unit})
    return data


def put_metric_data_calls(snapshot: FleetSnapshot, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The keyword arguments of each ``put_metric_data`` call that publishes ``snapshot``."""
    data = metric_data(snapshot)
    return [
        {"Namespace": namespace, "MetricData": data[i : i + MAX_DATA_PER_CALL]}
        for i in range(0, len(data), MAX_DATA_PER_CALL)
    ]


def publish(calls: list[dict[str, Any]], client: CloudWatchClient) -> None:
    for call in calls:
        client.put_metric_data(**call)
