"""``/v1/jobs``: submit, read, list, cancel."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, Field

from api.auth import caller, list_scope
from api.contract import Answer, contract
from api.inputs import json_body, parse_headers, parse_query
from api.services import services
from jobs.admission import MAX_IDEMPOTENCY_KEY, admit, prepare
from jobs.errors import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    NoWorker,
    Overloaded,
    TooManyRequests,
    ValidationFailed,
)
from jobs.models import JobRequest, JobStatus
from jobs.store import CancelOutcome, JobRecord
from jobs.tenants import TENANT_PATTERN
from jobs.view import JobPage, JobView, render_job

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
MAX_LIST_LIMIT = 100
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


class JobListQuery(BaseModel):
    status: JobStatus | None = Field(default=None, description="only jobs in this state")
    limit: int = Field(default=20, ge=1, le=MAX_LIST_LIMIT, description="jobs per page")
    cursor: int | None = Field(default=None, ge=0, description="`next_cursor` of the previous page")
    tenant: str | None = Field(
        default=None, pattern=TENANT_REGEX, description="admin keys: only this tenant's jobs (others: ignored)"
    )


@bp.post("")
@contract(
    "Submit a job",
    body=JobRequest,
    headers=SubmitHeaders,
    responses={
        202: Answer(JobView, "the job, queued", ("Location",), RATE_LIMIT_HEADERS),
        200: Answer(JobView, "the job this Idempotency-Key created earlier", ("Location",), RATE_LIMIT_HEADERS),
    },
    errors=(ValidationFailed, IdempotencyConflict, TooManyRequests, Overloaded, NoWorker),
)
def create_job() -> Response:
    """Validate, then create the job in one atomic step with the caller's quota and rate and the
    model's backpressure: ``202`` (new), ``200`` (the same Idempotency-Key and body again),
    ``422``, ``429`` / ``503`` with ``Retry-After``."""
    svc = services()
    body = json_body()
    idempotency_key = parse_headers(SubmitHeaders).idempotency_key
    prepared = prepare(body, svc.catalog, svc.settings)
    who = caller()
    admitted = admit(svc.store, prepared, who.owner, who.limits, svc.settings, idempotency_key)
    result = admitted.result
    if result.record is None:  # the Idempotency-Key named an earlier job with this same body
        response = _job_response(result.job_id, 200)
    else:
        response = _render(result.record, result.queue_position, 202)
    response.headers.update(admitted.headers)
    return response


@bp.get("/<job_id>")
@contract("Read a job", responses={200: JobView}, errors=(JobNotFound,))
def get_job(job_id: str) -> Response:
    """Another tenant's job answers 404, exactly like an unknown id."""
    return _job_response(job_id, 200)


@bp.post("/<job_id>/cancel")
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
    record = find_job(job_id)
    outcome = services().store.cancel(job_id, record.model, tenant=caller().scope)
    if outcome is CancelOutcome.MISSING:
        raise JobNotFound(f"no job with id {job_id!r}")
    if outcome in (CancelOutcome.SUCCEEDED, CancelOutcome.FAILED):
        raise InvalidTransition(f"job {job_id} already {outcome.value}; only queued or running jobs can be canceled")
    return _job_response(job_id, 202 if outcome is CancelOutcome.CANCEL_REQUESTED else 200)


@bp.get("")
@contract("List jobs", query=JobListQuery, responses={200: JobPage})
def list_jobs() -> Response:
    """The caller's jobs, newest first (an admin: everyone's, or ``?tenant=``'s)."""
    svc = services()
    query = parse_query(JobListQuery)
    page = svc.store.page(tenant=list_scope(query.tenant), status=query.status, limit=query.limit, cursor=query.cursor)
    data = [render_job(r, None, svc.storage.presign) for r in page.jobs]
    return jsonify({"data": data, "next_cursor": page.next_cursor})


def _job_response(job_id: str, status: int) -> Response:
    record, position = services().store.get_with_position(job_id, tenant=caller().scope)
    if record is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return _render(record, position, status)


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
