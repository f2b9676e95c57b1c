"""Admitting a job: validate it, vet its webhook, create it in one atomic step that also
checks the model's backpressure and the key's quota and rate — and say what a refusal means
to a client. Plain functions over the store; the HTTP routes (``/v1/jobs``, batches, the
Replicate-compatible ones) call ``admit`` and map its errors in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from jobs.capabilities import ModelCatalog
from jobs.errors import (
    DQError,
    FieldError,
    IdempotencyConflict,
    NoWorker,
    Overloaded,
    TooManyItems,
    TooManyRequests,
    ValidationFailed,
)
from jobs.settings import Settings
from jobs.store import PRIORITY_BANDS, CreateOutcome, CreateResult, JobStore, Limits, NewJob, Owner
from jobs.submit import PreparedJob, new_job_id, prepare_job
from webhooks.ssrf import WebhookURLRefused, check_webhook_url

MAX_IDEMPOTENCY_KEY = 255  # characters of an Idempotency-Key header


@dataclass(frozen=True)
class Admitted:
    result: CreateResult  # CREATED, or EXISTS with the same request (answer the original job)
    headers: dict[str, str]  # RateLimit headers for the key


def prepare(body: Any, catalog: ModelCatalog, settings: Settings) -> PreparedJob:
    """Validate the body against the schema and the model; refuse an unsafe webhook URL."""
    prepared = prepare_job(
        body, catalog, settings.default_model, ttl_s=settings.job_ttl_s, timeout_s=settings.job_timeout_s
    )
    if prepared.webhook:
        try:
            check_webhook_url(prepared.webhook, settings.webhook_allowlist)
        except WebhookURLRefused as exc:
            raise ValidationFailed(f"webhook refused: {exc}", [FieldError("webhook", str(exc))]) from None
    return prepared


def check_priority(prepared: PreparedJob, limits: Limits) -> None:
    """A key may ask for priorities up to its ``max_priority``."""
    if PRIORITY_BANDS[prepared.priority] < PRIORITY_BANDS[limits.max_priority]:
        raise ValidationFailed(
            f"priority {prepared.priority!r} is above this key's max_priority {limits.max_priority!r}",
            [FieldError("priority", f"at most {limits.max_priority!r} with this key")],
        )


def new_job(prepared: PreparedJob, extra: dict[str, str] | None = None) -> NewJob:
    return NewJob(
        new_job_id(),
        prepared.input,
        priority=prepared.priority,
        batch_class=prepared.batch_class,
        metadata=prepared.metadata,
        webhook=prepared.webhook,
        webhook_events_filter=prepared.webhook_events_filter,
        extra=extra or {},
    )


def admit(
    store: JobStore,
    prepared: PreparedJob,
    owner: Owner,
    limits: Limits,
    settings: Settings,
    idempotency_key: str | None = None,
    extra: dict[str, str] | None = None,
) -> Admitted:
    """Create the job, or raise the refusal as a domain error (``TooManyRequests``, ``Overloaded``,
    ``NoWorker``, ``IdempotencyConflict``, ``ValidationFailed`` for a priority above the key's)
    carrying ``Retry-After`` and RateLimit headers."""
    check_priority(prepared, limits)
    job = new_job(prepared, extra)
    result = store.create(
        job.id,
        prepared.model,
        prepared.input,
        owner=owner,
        limits=limits,
        priority=job.priority,
        batch_class=job.batch_class,
        metadata=job.metadata,
        webhook=job.webhook,
        webhook_events_filter=job.webhook_events_filter,
        idempotency_key=idempotency_key,
        request_hash=prepared.request_hash,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        extra=job.extra,
    )
    headers = rate_limit_headers(limits, result.tokens)
    if result.outcome is CreateOutcome.EXISTS and result.request_hash != prepared.request_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request body within 24 h",
            [FieldError("Idempotency-Key", f"already used for job {result.job_id}")],
        )
    if result.outcome in (CreateOutcome.CREATED, CreateOutcome.EXISTS):
        return Admitted(result, headers)
    raise refusal(result, prepared.model, limits, headers)


def refusal(result: CreateResult, model: str, limits: Limits, headers: dict[str, str]) -> DQError:
    """The error a refused create becomes: what was exceeded, and when to try again."""
    retry = {"Retry-After": str(max(1, math.ceil(result.retry_after_s)))}
    if result.outcome is CreateOutcome.RATE:
        detail = f"more than {limits.rate_per_s:g} submits per second (burst {limits.burst}) with this key"
        return TooManyRequests(detail, headers={**headers, **retry})
    if result.outcome is CreateOutcome.QUOTA:
        detail = f"this key already has max_active_jobs={limits.max_active} jobs queued or running"
        quota = {"RateLimit-Policy": f'"active";q={limits.max_active}', "RateLimit": '"active";r=0'}
        return TooManyRequests(detail, headers={**quota, **retry})
    if result.outcome is CreateOutcome.NO_WORKER:
        return NoWorker(f"no worker for model {model!r} has been seen for a while; try later", headers=retry)
    detail = f"model {model!r} has too long a queue to take more jobs now (about {result.retry_after_s:.0f} s)"
    return Overloaded(detail, headers=retry)


def rate_limit_headers(limits: Limits, tokens: float | None) -> dict[str, str]:
    """IETF RateLimit headers for a token bucket (draft-ietf-httpapi-ratelimit-headers): the
    quota is the bucket (``q``) refilled over ``w`` seconds; ``r`` tokens remain, full again in ``t``."""
    if tokens is None or limits.rate_per_s <= 0:
        return {}
    window = max(1, math.ceil(limits.burst / limits.rate_per_s))
    until_full = max(0, math.ceil((limits.burst - tokens) / limits.rate_per_s))
    return {
        "RateLimit-Policy": f'"default";q={limits.burst};w={window}',
        "RateLimit": f'"default";r={max(0, math.floor(tokens))};t={until_full}',
    }


MAX_BATCH = 100


def admit_batch(
    store: JobStore, catalog: ModelCatalog, settings: Settings, bodies: Any, owner: Owner, limits: Limits
) -> list[BatchItem]:
    """Validate each body, then create the valid ones — one atomic step per model — each
    created or refused as it would have been alone; answers in request order."""
    if not isinstance(bodies, list) or not bodies:
        raise ValidationFailed("`jobs` must be a non-empty list", [FieldError("jobs", "a list of 1 to 100 jobs")])
    if len(bodies) > MAX_BATCH:
        raise TooManyItems(
            f"{len(bodies)} jobs in one batch; at most {MAX_BATCH}", [FieldError("jobs", f"at most {MAX_BATCH} jobs")]
        )
    items: list[BatchItem] = []
    by_model: dict[str, list[tuple[int, NewJob]]] = {}
    for index, body in enumerate(bodies):
        try:
            prepared = prepare(body, catalog, settings)
            check_priority(prepared, limits)
        except DQError as exc:
            items.append(BatchItem(index, exc.status, error=exc))
            continue
        by_model.setdefault(prepared.model, []).append((index, new_job(prepared)))
    for model, jobs in by_model.items():
        results = store.create_many(model, [job for _, job in jobs], owner=owner, limits=limits)
        for (index, _), result in zip(jobs, results, strict=True):
            if result.created:
                items.append(BatchItem(index, 202, result=result))
            else:
                error = refusal(result, model, limits, {})
                items.append(BatchItem(index, error.status, error=error))
    return sorted(items, key=lambda item: item.index)


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch submit: what it alone would have got."""

    index: int
    status: int
    result: CreateResult | None = None
    error: DQError | None = None
