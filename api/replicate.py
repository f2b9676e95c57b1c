"""Replicate-compatible routes (``/v1/predictions``, ``/v1/models/<owner:owner>/<name>/…``): existing
Replicate client code changes only its base URL and token.

A prediction IS a job: the same store, auth and tenant rules as ``/v1/jobs`` (another tenant's
id is a 404), visible through both APIs. The mapping itself is plain functions in
``jobs/replicate.py``; this module only reads requests and answers them. docs/replicate.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, Field

from api.auth import caller, caller_or_none, list_scope, signed_or_keyed
from api.contract import Answer, contract
from api.inputs import json_body, parse_headers, parse_query
from api.jobs import MAX_LIST_LIMIT, SubmitHeaders, event_stream, find_job, prefer_wait, request_cancel, wait_for_job
from api.services import services
from jobs.admission import admit, prepare
from jobs.capabilities import ModelInfo
from jobs.errors import (
    DQError,
    IdempotencyConflict,
    JobNotFound,
    ModelNotFound,
    NoWorker,
    OutputNotFound,
    Overloaded,
    StorageUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
    VersionNotFound,
)
from jobs.events import Event
from jobs.models import JobStatus
from jobs.replicate import (
    Addressing,
    ModelPredictionRequest,
    ModelVersion,
    Prediction,
    PredictionPage,
    PredictionRequest,
    ReplicateModel,
    VersionPage,
    artifact_version,
    as_prediction_error,
    job_body,
    parse_model_ref,
    prediction_stream_events,
    render_model,
    render_prediction,
    render_version,
    valid_output_signature,
)
from jobs.store import ANY_TENANT, JobRecord
from jobs.submit import parse_body

bp = Blueprint("replicate", __name__, url_prefix="/v1")
F = TypeVar("F", bound=Callable[..., Any])
CREATE_ANSWERS = {
    201: Answer(
        Prediction,
        "the prediction: `starting` (the wait ran out, or none was asked), or finished within `Prefer: wait`",
        ("Location",),
        ("RateLimit-Policy", "RateLimit", "Preference-Applied"),
    ),
    200: Answer(Prediction, "the prediction this Idempotency-Key created", ("Location",)),
}
CREATE_ERRORS = (ValidationFailed, IdempotencyConflict, TooManyRequests, Overloaded, NoWorker, ModelNotFound)


class OutputQuery(BaseModel):
    sig: str | None = Field(
        default=None, max_length=64, description="the signature in an `output` URL: lets a request without a key in"
    )


class PredictionListQuery(BaseModel):
    cursor: int | None = Field(default=None, ge=0, description="from the previous page's `next` URL")
    limit: int = Field(default=MAX_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT, description="predictions per page")


# -- predictions -----------------------------------------------------------------------
def creates(rule: str, summary: str, body: type[BaseModel], errors: tuple[type[DQError], ...]) -> Callable[[F], F]:
    """A route that creates a prediction (they share headers, answers and most problems)."""

    def register(view: F) -> F:
        documented = contract(
            summary, body=body, headers=SubmitHeaders, responses=CREATE_ANSWERS, errors=errors, tag="replicate"
        )(view)
        bp.post(rule)(documented)
        return documented

    return register


@creates("/predictions", "Create a prediction", PredictionRequest, (*CREATE_ERRORS, VersionNotFound))
def create_prediction() -> Response:
    """Replicate's ``POST /v1/predictions``: ``version`` is a version id (the compiled artifact's
    content hash), ``owner/name:<id>`` or ``owner/name``. ``Prefer: wait[=N]`` (N ≤ 60) answers
    once the prediction is done, or ``starting`` when the wait runs out."""
    body = parse_body(PredictionRequest, json_body())
    owner, name, version = parse_model_ref(body.version)
    info, version_id = find_version(owner, name, version) if owner else find_version_id(body.version)
    return _create(info, version_id, body)


@creates(
    "/models/<owner:owner>/<name>/predictions", "Create a prediction of a model", ModelPredictionRequest, CREATE_ERRORS
)
def create_model_prediction(owner: str, name: str) -> Response:
    """Runs the model's current version (what ``replicate.run("owner/name", …)`` calls)."""
    body = parse_body(ModelPredictionRequest, json_body())
    info, version_id = find_version(owner, name, None)
    return _create(info, version_id, body)


def _create(info: ModelInfo, version_id: str, body: ModelPredictionRequest) -> Response:
    """Admit the job the request stands for (as ``POST /v1/jobs`` does), then wait if asked."""
    svc = services()
    headers = parse_headers(SubmitHeaders)
    try:
        prepared = prepare(job_body(body, info.name), svc.catalog, svc.settings)
    except ValidationFailed as exc:
        raise as_prediction_error(exc) from None
    at = Addressing(base_url(), f"{svc.settings.model_owner}/{info.name}", version_id)
    who = caller()
    extra = {"replicate": json.dumps(at.as_dict())}
    admitted = admit(svc.store, prepared, who.owner, who.limits, svc.settings, headers.idempotency_key, extra)
    result = admitted.result
    wait_s = prefer_wait(headers.prefer)
    record = result.record  # as created: no need to read it back, unless asked to wait
    if record is None or wait_s:
        record, _ = wait_for_job(result.record.id if result.record else result.job_id, wait_s)
    if record is None:
        raise JobNotFound("the prediction is gone")
    response = _answer(record, 201 if result.record else 200, pending_as_starting=wait_s > 0)
    if wait_s:
        response.headers["Preference-Applied"] = f"wait={wait_s:g}"
    response.headers.update(admitted.headers)
    return response


@bp.get("/predictions/<jobid:job_id>")
@contract("Get a prediction", responses={200: Prediction}, errors=(JobNotFound,), tag="replicate")
def get_prediction(job_id: str) -> Response:
    """Any of the caller's jobs, as a prediction (another tenant's: 404)."""
    return _answer(find_job(job_id), 200)


@bp.get("/predictions")
@contract("List predictions", query=PredictionListQuery, responses={200: PredictionPage}, tag="replicate")
def list_predictions() -> Response:
    """The caller's jobs, newest first, as Replicate pages them: ``{"previous", "next", "results"}``."""
    svc = services()
    query = parse_query(PredictionListQuery)
    page = svc.store.page(tenant=list_scope(None), limit=query.limit, cursor=query.cursor)
    render = renderer()
    results = [render(record) for record in page.jobs]
    more = f"{base_url()}/v1/predictions?cursor={page.next_cursor}&limit={query.limit}" if page.next_cursor else None
    return jsonify({"previous": None, "next": more, "results": results})


@bp.post("/predictions/<jobid:job_id>/cancel")
@contract("Cancel a prediction", responses={200: Prediction}, errors=(JobNotFound,), tag="replicate")
def cancel_prediction(job_id: str) -> Response:
    """Starting: canceled at once. Processing: stops at its next step (``processing`` until then).
    Finished: answered as it is, as Replicate does."""
    request_cancel(job_id)
    return _answer(find_job(job_id), 200)


@bp.get("/predictions/<jobid:job_id>/output/<int:index>")
@contract(
    "Download an output",
    query=OutputQuery,
    responses={200: Answer(None, "the image's bytes (`image/png`, `image/jpeg` or `image/webp`)")},
    errors=(JobNotFound, OutputNotFound, StorageUnavailable),
    tag="replicate",
)
@signed_or_keyed
def prediction_output(job_id: str, index: int) -> Response:
    """One image of a succeeded prediction, streamed from object storage: the ``output`` URLs.
    With the key, or without one when the URL's ``sig`` is valid (Replicate's JavaScript client
    and browsers fetch outputs without the key; its Python client sends it, which a presigned
    S3 URL would refuse)."""
    record = _output_job(job_id, index, parse_query(OutputQuery).sig)
    if record.status is not JobStatus.SUCCEEDED or index >= len(record.outputs):
        raise OutputNotFound(f"prediction {job_id} has no output {index}")
    stored = record.outputs[index]
    try:
        chunks, length = services().storage.open(stored["bucket"], stored["key"])
    except KeyError:
        raise OutputNotFound(f"output {index} of prediction {job_id} is no longer stored") from None
    except (BotoCoreError, ClientError) as exc:
        raise StorageUnavailable(f"object storage did not answer: {exc}", headers={"Retry-After": "5"}) from None
    response = Response(chunks, mimetype=stored["content_type"])
    response.headers["Content-Length"] = str(length)
    return response


def _output_job(job_id: str, index: int, signature: str | None) -> JobRecord:
    """The caller's job; for a request without a key, the job the signature was made for."""
    if caller_or_none() is not None:
        return find_job(job_id)
    svc = services()
    record = svc.store.get(job_id, tenant=ANY_TENANT)
    secrets = svc.tenants.webhook_secret(record.tenant).signing(time.time()) if record else []
    if record is None or not valid_output_signature(secrets, job_id, index, signature or ""):
        raise Unauthorized(
            "the signature is not valid for this output (or its tenant's secret was rotated); send your API key",
            headers={"WWW-Authenticate": 'Bearer realm="dq"'},
        )
    return record


@bp.get("/predictions/<jobid:job_id>/stream")
@contract(
    "Stream a prediction",
    responses={
        200: Answer(None, "Server-Sent Events: `logs`, `output`, `error`, `done`", media_type="text/event-stream")
    },
    errors=(JobNotFound,),
    tag="replicate",
)
def prediction_stream(job_id: str) -> Response:
    """Replicate's event stream (``urls.stream``): a ``logs`` event per progress step, an
    ``output`` event per image URL, ``error``, then ``done`` (``{}`` or ``{"reason": …}``)."""
    record = find_job(job_id)
    at = addressing(record)
    secret = output_secret(record.tenant)

    def messages(event: Event) -> list[tuple[str, str]]:
        return prediction_stream_events(event.raw, at, secret)

    return event_stream(job_id, 0, messages)


def _answer(record: JobRecord, status: int, *, pending_as_starting: bool = False) -> Response:
    response = jsonify(renderer()(record, pending_as_starting=pending_as_starting))
    response.status_code = status
    response.headers["Location"] = f"/v1/predictions/{record.id}"
    return response


# -- models and versions ---------------------------------------------------------------
@bp.get("/models/<owner:owner>/<name>")
@contract("Get a model", responses={200: ReplicateModel}, errors=(ModelNotFound,), tag="replicate")
def get_model(owner: str, name: str) -> Response:
    """A compiled model as Replicate shows one; ``latest_version`` is the artifact as it is now."""
    info = find_model(owner, name)
    return jsonify(render_model(info, owner, base_url(), _version(info)))


@bp.get("/models/<owner:owner>/<name>/versions")
@contract("List a model's versions", responses={200: VersionPage}, errors=(ModelNotFound,), tag="replicate")
def list_versions(owner: str, name: str) -> Response:
    """One version: the artifact as it is now (a recompiled model is a new version; older ones
    are not kept)."""
    info, _ = find_version(owner, name, None)
    return jsonify({"previous": None, "next": None, "results": [_version(info)]})


@bp.get("/models/<owner:owner>/<name>/versions/<version_id>")
@contract(
    "Get a model version", responses={200: ModelVersion}, errors=(ModelNotFound, VersionNotFound), tag="replicate"
)
def get_version(owner: str, name: str, version_id: str) -> Response:
    """``openapi_schema`` describes the inputs the model takes, its static shapes as enums."""
    info, _ = find_version(owner, name, version_id)
    return jsonify(_version(info))


def _version(info: ModelInfo) -> dict[str, object]:
    version_id, written_at = artifact_version(Path(info.path))
    return render_version(info, version_id, written_at)


# -- lookups ---------------------------------------------------------------------------
def find_model(owner: str, name: str) -> ModelInfo:
    """The model ``owner/name`` addresses: ``owner`` must be ``DQ_MODEL_OWNER``; else 404."""
    svc = services()
    info = svc.catalog.get(name) if owner == svc.settings.model_owner else None
    if info is None:
        raise ModelNotFound(f"no model {owner}/{name} (models here are {svc.settings.model_owner}/<name>)")
    return info


def find_version(owner: str, name: str, version: str | None) -> tuple[ModelInfo, str]:
    """The model and its current version id; ``version``, when given, must be that id."""
    info = find_model(owner, name)
    current, _ = artifact_version(Path(info.path))
    if version is not None and version != current:
        raise VersionNotFound(f"model {owner}/{name} has no version {version!r}; its version is {current}")
    return info, current


def find_version_id(version: str) -> tuple[ModelInfo, str]:
    """The model whose artifact has content hash ``version``."""
    for info in services().catalog.all():
        if artifact_version(Path(info.path))[0] == version:
            return info, version
    raise VersionNotFound(f"no model version {version!r}")


def base_url() -> str:
    """The API's root as this client reached it (links in predictions are absolute, as Replicate's)."""
    return request.url_root.rstrip("/")


def addressing(record: JobRecord, versions: dict[str, str] | None = None) -> Addressing:
    """How a job reads as a prediction: as it was created through these routes, or (a job from
    ``/v1/jobs``) its model's current version (memoised in ``versions``); links on this
    request's base URL."""
    svc = services()
    model = f"{svc.settings.model_owner}/{record.model}"
    if record.replicate is not None:
        return Addressing(base_url(), model, record.replicate.get("version", ""))
    versions = {} if versions is None else versions
    if record.model not in versions:
        info = svc.catalog.get(record.model)
        versions[record.model] = artifact_version(Path(info.path))[0] if info else ""
    return Addressing(base_url(), model, versions[record.model])


def output_secret(tenant: str) -> str:
    """What signs the tenant's output URLs: its current webhook secret."""
    return services().tenants.webhook_secret(tenant).secret


def renderer() -> Callable[..., dict[str, Any]]:
    """``render(record, pending_as_starting=False)``: jobs as predictions, for one request (model
    versions and tenants' secrets read once each)."""
    versions: dict[str, str] = {}
    secrets: dict[str, str] = {}

    def render(record: JobRecord, pending_as_starting: bool = False) -> dict[str, Any]:
        if record.outputs and record.tenant not in secrets:
            secrets[record.tenant] = output_secret(record.tenant)
        return render_prediction(
            record,
            addressing(record, versions),
            output_secret=secrets.get(record.tenant),
            pending_as_starting=pending_as_starting,
        )

    return render
