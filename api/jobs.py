"""``/v1/jobs``: submit, read, list."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.services import services
from jobs.errors import (
    FieldError,
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    MalformedJSON,
    ValidationFailed,
)
from jobs.models import JobStatus
from jobs.store import CancelOutcome, JobRecord
from jobs.submit import new_job_id, prepare_job
from jobs.view import render_job
from webhooks.ssrf import WebhookURLRefused, check_webhook_url

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
MAX_IDEMPOTENCY_KEY = 255
MAX_LIST_LIMIT = 100


@bp.post("")
def create_job() -> Response:
    svc = services()
    body = _json_body()
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not (0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY):
        raise ValidationFailed(
            "invalid Idempotency-Key header",
            [FieldError("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters")],
        )
    settings = svc.settings
    prepared = prepare_job(
        body, svc.catalog, settings.default_model, ttl_s=settings.job_ttl_s, timeout_s=settings.job_timeout_s
    )
    if prepared.webhook:
        try:
            check_webhook_url(prepared.webhook, settings.webhook_allowlist)
        except WebhookURLRefused as exc:
            raise ValidationFailed(f"webhook refused: {exc}", [FieldError("webhook", str(exc))]) from None
    job_id = new_job_id()
    result = svc.store.create(
        job_id,
        prepared.model,
        prepared.input,
        metadata=prepared.metadata,
        webhook=prepared.webhook,
        webhook_events_filter=prepared.webhook_events_filter,
        idempotency_key=idempotency_key,
        request_hash=prepared.request_hash,
        idempotency_ttl_s=svc.settings.idempotency_ttl_s,
    )
    if not result.created:
        if result.request_hash != prepared.request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different request body within 24 h",
                [FieldError("Idempotency-Key", f"already used for job {result.job_id}")],
            )
        return _job_response(result.job_id, 200)
    assert result.record is not None  # created: the store hands back what it wrote
    return _render(result.record, result.queue_position, 202)


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    return _job_response(job_id, 200)


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """Queued: canceled at once (200). Running: the worker stops at its next step (202).
    Already canceled: 200 (idempotent). Succeeded or failed: 409."""
    record = find_job(job_id)
    outcome = services().store.cancel(job_id, record.model)
    if outcome is CancelOutcome.MISSING:
        raise JobNotFound(f"no job with id {job_id!r}")
    if outcome in (CancelOutcome.SUCCEEDED, CancelOutcome.FAILED):
        raise InvalidTransition(f"job {job_id} already {outcome.value}; only queued or running jobs can be canceled")
    return _job_response(job_id, 202 if outcome is CancelOutcome.CANCEL_REQUESTED else 200)


@bp.get("")
def list_jobs() -> Response:
    svc = services()
    status = _status_arg(request.args.get("status"))
    limit = _int_arg("limit", 20, 1, MAX_LIST_LIMIT)
    cursor = _int_arg("cursor", None, 0, None)
    page = svc.store.page(status, limit or 20, cursor)
    data = [render_job(r, None, svc.storage.presign) for r in page.jobs]
    return jsonify({"data": data, "next_cursor": page.next_cursor})


def _job_response(job_id: str, status: int) -> Response:
    record, position = services().store.get_with_position(job_id)
    if record is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return _render(record, position, status)


def _render(record: JobRecord, position: int | None, status: int) -> Response:
    response = jsonify(render_job(record, position, services().storage.presign))
    response.status_code = status
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return response


def find_job(job_id: str) -> JobRecord:
    record = services().store.get(job_id)
    if record is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return record


def _json_body() -> Any:
    content_type = request.mimetype
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ValidationFailed(
            f"unsupported content type {content_type!r}", [FieldError("Content-Type", "must be application/json")]
        )
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJSON(f"the body is not valid JSON: {exc}", [FieldError("body", "malformed JSON")]) from exc


def _status_arg(raw: str | None) -> JobStatus | None:
    if raw in (None, ""):
        return None
    try:
        return JobStatus(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in JobStatus)
        raise ValidationFailed(f"unknown status {raw!r}", [FieldError("status", f"must be one of {allowed}")]) from None


def _int_arg(name: str, default: int | None, low: int, high: int | None) -> int | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be an integer", [FieldError(name, "must be an integer")]) from None
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValidationFailed(f"{name} out of range", [FieldError(name, f"must be {bound}")])
    return value
