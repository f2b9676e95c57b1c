"""The public shape of a job and of its events: what ``GET /v1/jobs/<id>`` returns, and what
webhooks and the ``/events`` stream carry (the same body for both).

``render_job`` builds it (plain dicts, on the hot path); ``JobView`` and its parts describe it
as pydantic models for the OpenAPI document, and the tests check one against the other.
``JobEvent`` is an event's body (a webhook's, and an SSE message's data).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.models import WEBHOOK_EVENTS, JobStatus, rfc3339
from jobs.store import JobRecord

Presigner = Callable[[str, str], "str | None"]  # (bucket, key) -> URL
WebhookEvent = Literal["started", "progress", "succeeded", "failed", "canceled"]  # jobs.models.WEBHOOK_EVENTS
EventType = Literal["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"]
EVENT_TYPES = tuple(f"job.{name}" for name in WEBHOOK_EVENTS)


class View(BaseModel):
    """A response body: exactly these fields (``additionalProperties: false``)."""

    model_config = ConfigDict(extra="forbid")


class JobInput(View):
    """The request as it will run: defaults filled, the seed drawn, the shape resolved."""

    prompt: str
    negative_prompt: str | None
    num_inference_steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    num_images: int
    output_format: Literal["png", "jpeg", "webp"]
    ttl_seconds: int
    timeout_seconds: int
    scheduler: str | None = Field(default=None, description="present only when the request chose one")


class JobOutput(View):
    """One stored image."""

    url: str | None = Field(description="a presigned GET URL, valid for DQ_S3_PRESIGN_TTL_S")
    bucket: str
    key: str
    content_type: Literal["image/png", "image/jpeg", "image/webp"]
    width: int
    height: int
    seed: int
    bytes: int
    sha256: str
    format: Literal["png", "jpg", "webp"]


class JobProgress(View):
    step: int = Field(ge=0)
    total: int = Field(ge=0)


class JobError(View):
    type: str = Field(
        description="generation_error, storage_error, timeout (ran too long), expired (queued too long), max_attempts"
    )
    message: str


class JobMetrics(View):
    queue_seconds: float | None
    generation_seconds: float | None
    total_seconds: float | None


class JobView(View):
    """A job as ``GET /v1/jobs/<id>`` shows it."""

    id: str
    status: JobStatus
    model: str
    tenant: str
    priority: Literal["low", "normal", "high"]
    input: JobInput
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    progress: JobProgress
    cancel_requested: bool
    queue_position: int | None = Field(
        ge=0, description="jobs the scheduler starts before this one (0: next); null unless queued"
    )
    eta_seconds: float | None = Field(
        default=None,
        ge=0,
        description="estimated seconds until it is done, from its queue position, the ready workers and "
        "the model's recent generation time; null unless queued (or before any worker measured one)",
    )
    outputs: list[JobOutput]
    error: JobError | None
    metrics: JobMetrics
    attempts: int = Field(ge=0)
    worker: str | None
    metadata: dict[str, Any] | None
    webhook: str | None
    webhook_events_filter: list[WebhookEvent] | None
    retry_of: str | None = Field(description="the job this one retries")
    retried_by: str | None = Field(description="the job that retried this one")


class JobPage(View):
    """A page of jobs, newest first; ``next_cursor`` is null on the last page."""

    data: list[JobView]
    next_cursor: str | None


class JobEvent(View):
    """An event's body (a webhook's, an SSE message's data): the job as it was at the transition."""

    type: EventType
    timestamp: datetime = Field(description="when the state changed")
    data: JobView


def render_job(
    record: JobRecord, queue_position: int | None, presign: Presigner | None, eta_seconds: float | None = None
) -> dict[str, Any]:
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
        "eta_seconds": eta_seconds if record.status is JobStatus.QUEUED else None,
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
