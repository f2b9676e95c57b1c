"""``/v1/jobs``: submit (one, or a batch), read, wait, stream events, list, cancel, retry."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, stream_with_context
from pydantic import BaseModel, Field

from api.auth import caller, list_scope
from api.contract import Answer, contract
from api.errors import Problem, problem_body
from api.inputs import json_body, parse_headers, parse_query
from api.services import services
from jobs.admission import MAX_BATCH, MAX_IDEMPOTENCY_KEY, admit, admit_batch, prepare
from jobs.errors import (
    FieldError,
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    NoWorker,
    Overloaded,
    TooManyItems,
    TooManyRequests,
    ValidationFailed,
)
from jobs.eta import eta_seconds
from jobs.events import Event, event_seq, follow
from jobs.models import JobRequest, JobStatus
from jobs.store import CancelOutcome, JobRecord, Owner
from jobs.submit import PreparedJob, batch_class
from jobs.tenants import TENANT_PATTERN
from jobs.view import JobPage, JobView, render_event, render_job

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
MAX_LIST_LIMIT = 100
MAX_WAIT_S = 60.0
TERMINAL = ("succeeded", "failed", "canceled")
TENANT_REGEX = f"^{TENANT_PATTERN.pattern}$"
RATE_LIMIT_HEADERS = ("RateLimit-Policy", "RateLimit")


class SubmitHeaders(BaseModel):
    idempotency_key: str | None = Field(
        default=None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="the same key with the same body within 24 h answers the original job (200); "
        "with another body, 422. Scoped per tenant",
    )
    prefer: str | None = Field(
        default=None,
        alias="Prefer",
        max_length=200,
        description="`wait=N` (RFC 7240; N ≤ 60, a bare `wait` is 60): answer 200 with the finished job if it "
        "ends within N seconds, else the usual 202 — Replicate's sync mode",
    )


class JobListQuery(BaseModel):
    status: JobStatus | None = Field(default=None, description="only jobs in this state")
    error_type: str | None = Field(
        default=None, min_length=1, max_length=64, description="only failed jobs with this `error.type` (dead letters)"
    )
    limit: int = Field(default=20, ge=1, le=MAX_LIST_LIMIT, description="jobs per page")
    cursor: int | None = Field(default=None, ge=0, description="`next_cursor` of the previous page")
    tenant: str | None = Field(
        default=None, pattern=TENANT_REGEX, description="admin keys: only this tenant's jobs (others: ignored)"
    )


class WaitQuery(BaseModel):
    wait: float = Field(default=0, ge=0, le=MAX_WAIT_S, description="answer once the job is terminal, or after N s")


class EventsHeaders(BaseModel):
    last_event_id: str | None = Field(
        default=None, alias="Last-Event-ID", max_length=200, description="resume after this event (an `id:` seen)"
    )


class BatchRequest(BaseModel):
    """Body of ``POST /v1/jobs/batch``: each item is a ``POST /v1/jobs`` body, validated alone (a bad
    one is a 422 *item* of the answer, not a refusal of the batch)."""

    jobs: list[Any] = Field(description=f"1 to {MAX_BATCH} job bodies (more: 413)")


class BatchItem(BaseModel):
    index: int = Field(ge=0, description="the item's place in the request")
    status: int = Field(description="what this job alone would have got: 202, 422, 429, 503")
    job: JobView | None = None
    error: Problem | None = None


class BatchAnswer(BaseModel):
    data: list[BatchItem]


@bp.post("")
@contract(
    "Submit a job",
    body=JobRequest,
    headers=SubmitHeaders,
    responses={
        202: Answer(JobView, "the job, queued", ("Location",), RATE_LIMIT_HEADERS + ("Preference-Applied",)),
        200: Answer(
            JobView,
            "finished within `Prefer: wait`, or the job this Idempotency-Key created earlier",
            ("Location",),
            RATE_LIMIT_HEADERS + ("Preference-Applied",),
        ),
    },
    errors=(ValidationFailed, IdempotencyConflict, TooManyRequests, Overloaded, NoWorker),
)
def create_job() -> Response:
    """Validate, then create the job in one atomic step with the caller's quota and rate and the
    model's backpressure: ``202`` (new), ``200`` (the same Idempotency-Key and body again, or
    finished within ``Prefer: wait``), ``422``, ``429`` / ``503`` with ``Retry-After``."""
    svc = services()
    body = json_body()
    headers = parse_headers(SubmitHeaders)
    prepared = prepare(body, svc.catalog, svc.settings)
    who = caller()
    admitted = admit(svc.store, prepared, who.owner, who.limits, svc.settings, headers.idempotency_key)
    result = admitted.result
    wait_s = prefer_wait(headers.prefer)
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
@contract(
    "Submit up to 100 jobs",
    body=BatchRequest,
    responses={200: BatchAnswer},
    errors=(ValidationFailed, TooManyItems),
)
def create_batch() -> Response:
    """``{"jobs": [...]}`` → ``{"data": [{"index", "status", "job" | "error"}]}`` in request order,
    ``status`` being what that job alone would have got (202, 422, 429, 503); the valid ones are
    created in one atomic step per model."""
    svc = services()
    who = caller()
    items = admit_batch(svc.store, svc.catalog, svc.settings, _batch_body()["jobs"], who.owner, who.limits)
    data = []
    for item in items:
        entry: dict[str, Any] = {"index": item.index, "status": item.status}
        if item.result is not None and item.result.record is not None:
            entry["job"] = render_job(item.result.record, item.result.queue_position, None)
        elif item.error is not None:
            entry["error"] = problem_body(item.error)
        data.append(entry)
    return jsonify({"data": data})


def _batch_body() -> dict[str, Any]:
    """``{"jobs": [...]}``; the items themselves are checked one by one (``admit_batch``)."""
    body = json_body()
    if not isinstance(body, dict) or set(body) != {"jobs"}:
        raise ValidationFailed('the body is {"jobs": [...]}', [FieldError("jobs", "required, and the only field")])
    return body


@bp.get("/<jobid:job_id>")
@contract("Read a job", query=WaitQuery, responses={200: JobView}, errors=(JobNotFound,))
def get_job(job_id: str) -> Response:
    """Another tenant's job answers 404, exactly like an unknown id. With ``?wait=N`` (N ≤ 60 s):
    answered as soon as the job is terminal, or after N."""
    return _job_response(job_id, 200, parse_query(WaitQuery).wait)


@bp.get("/<jobid:job_id>/events")
@contract(
    "Stream a job's events",
    headers=EventsHeaders,
    responses={200: Answer(None, "Server-Sent Events until the terminal one", media_type="text/event-stream")},
    errors=(JobNotFound,),
)
def job_events(job_id: str) -> Response:
    """Server-Sent Events: the job's events — the same types and bodies as its webhooks (`data:`
    is a `JobEvent`), ``id:`` = the webhook-id — from the start (or after ``Last-Event-ID``),
    then live, until the terminal one; a finished job replays its history and the stream ends."""
    find_job(job_id)
    last = parse_headers(EventsHeaders).last_event_id or ""
    presign = services().storage.presign

    def messages(event: Event) -> list[tuple[str, str]]:
        return [(event.type, json.dumps(render_event(event.raw, presign), separators=(",", ":")))]

    return event_stream(job_id, event_seq(last), messages)


def event_stream(job_id: str, after: int, messages: Callable[[Event], list[tuple[str, str]]]) -> Response:
    """Server-Sent Events: each of the job's events after number ``after`` as ``messages`` renders
    it, (event, data) pairs sent with the event's id, then live ones until the terminal one."""
    svc = services()
    stream = follow(svc.events, svc.hub, job_id, after=after)

    def lines() -> Iterator[str]:
        yield "retry: 1000\n\n"
        for event in stream:
            if event is None:
                yield ": keep-alive\n\n"
                continue
            for kind, data in messages(event):
                yield f"id: {event.id}\nevent: {kind}\ndata: {data}\n\n"

    response = Response(stream_with_context(lines()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy must not hold the stream back
    return response


@bp.post("/<jobid:job_id>/cancel")
@contract(
    "Cancel a job",
    responses={
        200: Answer(JobView, "canceled (it was queued, or already canceled)", ("Location",)),
        202: Answer(JobView, "running: cancel_requested, the worker stops at its next step", ("Location",)),
    },
    errors=(JobNotFound, InvalidTransition),
)
def cancel_job(job_id: str) -> Response:
    """Queued: canceled at once (200). Running: the worker stops at its next step (202).
    Already canceled: 200 (idempotent). Succeeded or failed: 409."""
    outcome = request_cancel(job_id)
    if outcome in (CancelOutcome.SUCCEEDED, CancelOutcome.FAILED):
        raise InvalidTransition(f"job {job_id} already {outcome.value}; only queued or running jobs can be canceled")
    return _job_response(job_id, 202 if outcome is CancelOutcome.CANCEL_REQUESTED else 200)


@bp.post("/<jobid:job_id>/retry")
@contract(
    "Retry a failed or canceled job",
    responses={202: Answer(JobView, "the new job, queued (`retry_of`)", ("Location",), RATE_LIMIT_HEADERS)},
    errors=(JobNotFound, InvalidTransition, ValidationFailed, TooManyRequests, Overloaded, NoWorker),
)
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


@bp.get("")
@contract("List jobs", query=JobListQuery, responses={200: JobPage})
def list_jobs() -> Response:
    """The caller's jobs, newest first (an admin: everyone's, or ``?tenant=``'s); ``?status=``
    and ``?error_type=`` filter (``status=failed&error_type=max_attempts``: the dead letters)."""
    svc = services()
    query = parse_query(JobListQuery)
    error_type = query.error_type
    where = (lambda r: r.error is not None and r.error.get("type") == error_type) if error_type else None
    page = svc.store.page(
        tenant=list_scope(query.tenant), status=query.status, limit=query.limit, cursor=query.cursor, where=where
    )
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
        if name.strip().lower() != "wait":
            continue
        if not value.strip():
            return MAX_WAIT_S
        try:
            return min(max(float(value.strip().strip('"')), 0.0), MAX_WAIT_S)
        except ValueError:
            return 0.0
    return 0.0


def _render(record: JobRecord, position: int | None, status: int) -> Response:
    response = jsonify(render_job(record, position, services().storage.presign, _eta(record, position)))
    response.status_code = status
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return response


def request_cancel(job_id: str) -> CancelOutcome:
    """Cancel the caller's job (queued: at once; running: at its worker's next step); ``404`` for
    no such job (or another tenant's). Finished jobs are left as they are (the outcome says so)."""
    record = find_job(job_id)
    outcome = services().store.cancel(job_id, record.model, tenant=caller().scope)
    if outcome is CancelOutcome.MISSING:
        raise JobNotFound(f"no job with id {job_id!r}")
    return outcome


def _eta(record: JobRecord, position: int | None) -> float | None:
    """A queued job's estimated seconds to done (``jobs/eta.py``); one more read, for queued jobs only."""
    if record.status is not JobStatus.QUEUED or position is None:
        return None
    svc = services()
    info = svc.catalog.get(record.model)
    batch = info.batch_size if info is not None and info.static else 1
    return eta_seconds(position, svc.capacity.get(record.model), batch)


def find_job(job_id: str) -> JobRecord:
    """The caller's job (an admin: anyone's); ``404`` otherwise, the same as for no such job."""
    record = services().store.get(job_id, tenant=caller().scope)
    if record is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return record
