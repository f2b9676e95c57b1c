"""``/v1/jobs``: submit (one, or a batch), read, wait, stream events, list, cancel, retry."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context

from api.auth import caller, list_scope
from api.errors import problem_body
from api.services import services
from jobs.admission import admit, admit_batch, check_idempotency_key, prepare
from jobs.errors import FieldError, InvalidTransition, JobNotFound, MalformedJSON, ValidationFailed
from jobs.events import event_seq, follow
from jobs.models import JobStatus
from jobs.store import ANY_TENANT, CancelOutcome, JobRecord, Owner
from jobs.submit import PreparedJob, batch_class
from jobs.tenants import TENANT_PATTERN
from jobs.view import render_event, render_job

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
MAX_LIST_LIMIT = 100
MAX_WAIT_S = 60.0
TERMINAL = ("succeeded", "failed", "canceled")


@bp.post("")
def create_job() -> Response:
    """Validate, then create the job in one atomic step with the caller's quota and rate and the
    model's backpressure: ``202`` (new), ``200`` (the same Idempotency-Key and body again),
    ``422``, ``429`` / ``503`` with ``Retry-After``."""
    svc = services()
    body = json_body()
    idempotency_key = request.headers.get("Idempotency-Key")
    check_idempotency_key(idempotency_key)
    prepared = prepare(body, svc.catalog, svc.settings)
    who = caller()
    admitted = admit(svc.store, prepared, who.owner, who.limits, svc.settings, idempotency_key)
    result = admitted.result
    wait_s = prefer_wait(request.headers.get("Prefer"))
    if result.record is None:  # the Idempotency-Key named an earlier job with this same body
        response = _job_response(result.job_id, 200, wait_s)
    elif wait_s:
        response = _job_response(result.record.id, 200, wait_s)  # Replicate's sync mode: 200 if done in time
        if response.get_json()["status"] not in TERMINAL:
            response.status_code = 202
    else:
        response = _render(result.record, result.queue_position, 202)
    if wait_s:
        response.headers["Preference-Applied"] = f"wait={wait_s:g}"
    response.headers.update(admitted.headers)
    return response


@bp.post("/batch")
def create_batch() -> Response:
    """Up to 100 jobs: ``{"jobs": [...]}`` → ``{"data": [{"index", "status", "job" | "error"}]}``
    in request order, ``status`` being what that job alone would have got (202, 422, 429, …)."""
    svc = services()
    body = json_body()
    if not isinstance(body, dict) or set(body) != {"jobs"}:
        raise ValidationFailed('the body is {"jobs": [...]}', [FieldError("jobs", "required, and the only field")])
    who = caller()
    items = admit_batch(svc.store, svc.catalog, svc.settings, body["jobs"], who.owner, who.limits)
    data = []
    for item in items:
        entry: dict[str, Any] = {"index": item.index, "status": item.status}
        if item.result is not None and item.result.record is not None:
            entry["job"] = render_job(item.result.record, item.result.queue_position, None)
        elif item.error is not None:
            entry["error"] = problem_body(item.error)
        data.append(entry)
    return jsonify({"data": data})


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    """The job; with ``?wait=N`` (N ≤ 60 s) answered as soon as it is terminal, or after N."""
    return _job_response(job_id, 200, _float_arg("wait", 0.0, 0.0, MAX_WAIT_S))


@bp.get("/<job_id>/events")
def job_events(job_id: str) -> Response:
    """Server-Sent Events: the job's events — the same types and bodies as its webhooks, ``id:``
    = the webhook-id — from the start (or after ``Last-Event-ID``), then live, until the
    terminal one; a finished job replays its history and the stream ends."""
    svc = services()
    find_job(job_id)
    last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or ""
    stream = follow(svc.events, svc.hub, job_id, after=event_seq(last))
    presign = svc.storage.presign

    def lines() -> Iterator[str]:
        yield "retry: 1000\n\n"
        for event in stream:
            if event is None:
                yield ": keep-alive\n\n"
                continue
            body = json.dumps(render_event(event.raw, presign), separators=(",", ":"))
            yield f"id: {event.id}\nevent: {event.type}\ndata: {body}\n\n"

    response = Response(stream_with_context(lines()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy must not hold the stream back
    return response


@bp.post("/<job_id>/retry")
def retry_job(job_id: str) -> Response:
    """A failed, canceled or expired job again: a new job with the same input, linked both ways
    (``retry_of`` / ``retried_by``): ``202``. Queued, running or succeeded: ``409``."""
    svc = services()
    record = find_job(job_id)
    if record.status not in (JobStatus.FAILED, JobStatus.CANCELED):
        raise InvalidTransition(f"job {job_id} is {record.status.value}; only failed or canceled jobs can be retried")
    info = svc.catalog.get(record.model)
    if info is None:
        raise ValidationFailed(f"model {record.model!r} is gone", [FieldError("model", "no longer available")])
    prepared = PreparedJob(
        model=record.model,
        input=record.input,
        metadata=record.metadata,
        webhook=record.webhook,
        webhook_events_filter=record.webhook_events_filter,
        request_hash="",
        priority=record.priority,
        batch_class=batch_class(record.input) if info.static and info.batch_size > 1 else "",
    )
    who = caller()
    owner = Owner(record.tenant, who.key)  # the retry belongs to the job's tenant; the caller's key pays
    admitted = admit(svc.store, prepared, owner, who.limits, svc.settings, extra={"retry_of": job_id})
    assert admitted.result.record is not None
    svc.store.link_retry(job_id, admitted.result.record.id)
    response = _render(admitted.result.record, admitted.result.queue_position, 202)
    response.headers.update(admitted.headers)
    return response


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """Queued: canceled at once (200). Running: the worker stops at its next step (202).
    Already canceled: 200 (idempotent). Succeeded or failed: 409."""
    record = find_job(job_id)
    outcome = services().store.cancel(job_id, record.model, tenant=caller().scope)
    if outcome is CancelOutcome.MISSING:
        raise JobNotFound(f"no job with id {job_id!r}")
    if outcome in (CancelOutcome.SUCCEEDED, CancelOutcome.FAILED):
        raise InvalidTransition(f"job {job_id} already {outcome.value}; only queued or running jobs can be canceled")
    return _job_response(job_id, 202 if outcome is CancelOutcome.CANCEL_REQUESTED else 200)


@bp.get("")
def list_jobs() -> Response:
    """The caller's jobs, newest first (an admin: everyone's, or ``?tenant=``'s); ``?status=``
    and ``?error_type=`` filter (``status=failed&error_type=max_attempts``: the dead letters)."""
    svc = services()
    status = _status_arg(request.args.get("status"))
    limit = _int_arg("limit", 20, 1, MAX_LIST_LIMIT)
    cursor = _int_arg("cursor", None, 0, None)
    error_type = request.args.get("error_type") or None
    where = (lambda r: r.error is not None and r.error.get("type") == error_type) if error_type else None
    page = svc.store.page(tenant=_scope_arg(), status=status, limit=limit or 20, cursor=cursor, where=where)
    data = [render_job(r, None, svc.storage.presign) for r in page.jobs]
    return jsonify({"data": data, "next_cursor": page.next_cursor})


def _job_response(job_id: str, status: int, wait_s: float = 0.0) -> Response:
    record, position = wait_for_job(job_id, wait_s)
    if record is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return _render(record, position, status)


def wait_for_job(job_id: str, wait_s: float) -> tuple[JobRecord | None, int | None]:
    """The caller's job (and queue position), once it is terminal or ``wait_s`` has passed."""
    svc = services()
    scope = caller().scope
    record, position = svc.store.get_with_position(job_id, tenant=scope)
    if record is None or record.status.is_terminal() or wait_s <= 0:
        return record, position
    deadline = time.monotonic() + wait_s
    with svc.hub.watch(job_id) as watch:
        while True:
            record, position = svc.store.get_with_position(job_id, tenant=scope)
            left = deadline - time.monotonic()
            if record is None or record.status.is_terminal() or left <= 0:
                return record, position
            watch.wait(left)


def prefer_wait(header: str | None) -> float:
    """Seconds a client asked to wait (RFC 7240 ``Prefer: wait=N``; a bare ``wait``, as
    Replicate's clients send it, means the most: 60); 0 without it. A hint: never an error."""
    for preference in (header or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return min(max(float(value.strip().strip('"')), 0.0), MAX_WAIT_S) if value.strip() else MAX_WAIT_S
            except ValueError:
                return 0.0
    return 0.0


def _render(record: JobRecord, position: int | None, status: int) -> Response:
    response = jsonify(render_job(record, position, services().storage.presign))
    response.status_code = status
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return response


def find_job(job_id: str) -> JobRecord:
    """The caller's job (an admin: anyone's); ``404`` otherwise, the same as for no such job."""
    record = services().store.get(job_id, tenant=caller().scope)
    if record is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return record


def _scope_arg() -> str:
    scope = list_scope()
    if scope != ANY_TENANT and not TENANT_PATTERN.fullmatch(scope):
        raise ValidationFailed("invalid tenant", [FieldError("tenant", "1-64 of a-z, 0-9, '.', '_', '-'")])
    return scope


def json_body() -> Any:
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


def _float_arg(name: str, default: float, low: float, high: float) -> float:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be a number", [FieldError(name, "must be a number")]) from None
    if not low <= value <= high:
        raise ValidationFailed(f"{name} out of range", [FieldError(name, f"must be from {low:g} to {high:g}")])
    return value


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
