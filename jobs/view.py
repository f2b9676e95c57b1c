"""The public shape of a job and of its events: what ``GET /v1/jobs/<id>`` returns, and what
webhooks and the ``/events`` stream carry (the same body for both)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobs.models import JobStatus, rfc3339
from jobs.store import JobRecord

Presigner = Callable[[str, str], "str | None"]  # (bucket, key) -> URL


def render_job(record: JobRecord, queue_position: int | None, presign: Presigner | None) -> dict[str, Any]:
    outputs = []
    for out in record.outputs:
        item = dict(out)
        item["url"] = presign(out["bucket"], out["key"]) if presign else None
        outputs.append(item)
    return {
        "id": record.id,
        "status": record.status.value,
        "model": record.model,
        "tenant": record.tenant,
        "priority": record.priority,
        "input": record.input,
        "created_at": rfc3339(record.created_at),
        "started_at": rfc3339(record.started_at),
        "completed_at": rfc3339(record.completed_at),
        "progress": {"step": record.progress_step, "total": record.progress_total},
        "cancel_requested": record.cancel_requested,
        "queue_position": queue_position if record.status is JobStatus.QUEUED else None,
        "outputs": outputs,
        "error": record.error,
        "metrics": job_metrics(record),
        "attempts": record.attempts,
        "worker": record.worker,
        "metadata": record.metadata,
        "webhook": record.webhook,
        "webhook_events_filter": record.webhook_events_filter,
        "retry_of": record.retry_of,
        "retried_by": record.retried_by,
    }


def job_metrics(record: JobRecord) -> dict[str, float | None]:
    def span(start: float | None, end: float | None) -> float | None:
        return round(end - start, 4) if start is not None and end is not None else None

    return {
        "queue_seconds": span(record.created_at, record.started_at),
        "generation_seconds": round(record.generation_seconds, 4) if record.generation_seconds is not None else None,
        "total_seconds": span(record.created_at, record.completed_at),
    }


def render_event(event: dict[str, Any], presign: Presigner | None) -> dict[str, Any]:
    """``{"type", "timestamp", "data"}``; data is the job as ``GET /v1/jobs/<id>`` showed it then."""
    return {
        "type": event["type"],
        "timestamp": rfc3339(float(event["timestamp"])),
        "data": render_job(JobRecord.from_hash(event["job"]), None, presign),
    }
