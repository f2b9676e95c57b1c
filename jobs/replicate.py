"""Replicate's HTTP API over our jobs: a prediction IS a job, seen through Replicate's shapes.

Plain functions and the pydantic models of Replicate's objects (prediction, model, version,
pages); no Flask and no I/O but reading a model's files for its version id. ``api/replicate.py``
is the HTTP layer; ``webhooks/deliver.py`` renders a prediction's webhook body with
``render_prediction_event``, from the job's own snapshot.

What maps onto what (docs/replicate.md has the table):

- statuses: queued → ``starting``, running → ``processing``; the terminal ones keep their names
  (an expired job is ``failed``, its ``error`` says ``expired: …``);
- ``webhook_events_filter``: ``start`` → ``started``, ``logs`` → ``progress``, ``output`` →
  ``succeeded`` (our images appear all at once, at the end), ``completed`` → the three ends;
- ``logs``: a tqdm-style line of the denoising progress (``35%|███       | 7/20``), which the
  client's ``Prediction.progress`` parses;
- ``output``: one URL per image, served by the API itself (``/v1/predictions/<id>/output/<n>``,
  same key): Replicate's clients fetch it with their own Bearer header, which S3 would refuse
  next to a presigned query.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from jobs.capabilities import ModelInfo
from jobs.errors import FieldError, ValidationFailed
from jobs.models import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS, JobRequest, JobStatus, rfc3339
from jobs.store import JobRecord

PredictionStatus = Literal["starting", "processing", "succeeded", "failed", "canceled"]
ReplicateEvent = Literal["start", "output", "logs", "completed"]
STATUSES: dict[JobStatus, PredictionStatus] = {
    JobStatus.QUEUED: "starting",
    JobStatus.RUNNING: "processing",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "canceled",
}
EVENT_FILTERS: dict[str, tuple[str, ...]] = {  # Replicate's webhook event -> ours
    "start": ("started",),
    "output": ("succeeded",),
    "logs": ("progress",),
    "completed": ("succeeded", "failed", "canceled"),
}
# The fields of a job's input a prediction takes, by their names in ``JobRequest``; Replicate's
# image models call the number of images ``num_outputs`` (ours: ``num_images``).
INPUT_FIELDS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "num_images",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "seed",
    "output_format",
)
RENAMED = {"num_images": "num_outputs"}
COG_VERSION = "dq"  # no Cog here: a name, not a version number the client would compare
HASH_CHUNK = 1 << 20


class View(BaseModel):
    model_config = ConfigDict(extra="forbid")


PredictionInput: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "PredictionInput",
    __config__=ConfigDict(extra="forbid", strict=True),
    __doc__="A prediction's `input`: a job's generation fields (`num_outputs` is our `num_images`); the "
    "model's version says which shapes and schedulers it takes (`openapi_schema`).",
    **{
        RENAMED.get(name, name): (JobRequest.model_fields[name].annotation, JobRequest.model_fields[name])
        for name in INPUT_FIELDS
    },
)


class ModelPredictionRequest(BaseModel):
    """Body of ``POST /v1/models/{owner}/{name}/predictions``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"input": {"prompt": "a pig with wings", "num_inference_steps": 4}}]},
    )

    input: PredictionInput  # type: ignore[valid-type]
    webhook: str | None = Field(default=None, max_length=2048, description="an absolute http(s) URL")
    webhook_events_filter: list[ReplicateEvent] | None = Field(
        default=None, min_length=1, description="default: `start`, `output`, `completed`"
    )
    stream: bool | None = Field(default=None, description="accepted and ignored: every prediction has `urls.stream`")


class PredictionRequest(ModelPredictionRequest):
    """Body of ``POST /v1/predictions``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"version": "dq/tiny-sd", "input": {"prompt": "a pig with wings"}}]}
    )

    version: str = Field(
        min_length=1,
        max_length=300,
        description="the model version's id (its artifact's content hash), `owner/name:<id>` or `owner/name`",
    )


class PredictionUrls(View):
    get: str
    cancel: str
    stream: str = Field(description="Server-Sent Events in Replicate's shape: `output`, `logs`, `error`, `done`")


class Prediction(View):
    """A job as Replicate's API shows a prediction."""

    id: str
    model: str = Field(description="`owner/name`")
    version: str
    status: PredictionStatus
    input: dict[str, Any]
    output: list[str] | None = Field(description="the images' URLs (served by this API, same key); null until done")
    logs: str = Field(description="the denoising progress, tqdm-style; empty before the first step")
    error: str | None
    metrics: dict[str, float] = Field(description="`predict_time` (generation) and `total_time`, in seconds")
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    urls: PredictionUrls
    source: Literal["api"]
    data_removed: bool
    webhook: str | None
    webhook_events_filter: list[ReplicateEvent] | None


class PredictionPage(View):
    """Newest first; ``next`` is the URL of the next page (null on the last), ``previous`` always null."""

    previous: str | None
    next: str | None
    results: list[Prediction]


class ModelVersion(View):
    id: str = Field(description="the SHA-256 of the model's name and its compiled artifact's files")
    created_at: datetime = Field(description="when the artifact was last written")
    cog_version: str = Field(description=f"always `{COG_VERSION}`: no Cog here")
    openapi_schema: dict[str, Any] = Field(description="`components.schemas.Input`: what the model takes")


class VersionPage(View):
    previous: str | None
    next: str | None
    results: list[ModelVersion]


class ReplicateModel(View):
    url: str
    owner: str
    name: str
    description: str
    visibility: Literal["private"]
    github_url: None
    paper_url: None
    license_url: None
    run_count: int = Field(description="always 0: runs are not counted here")
    cover_image_url: None
    default_example: None
    latest_version: ModelVersion


@dataclass(frozen=True)
class Addressing:
    """How a prediction names its model and links to itself; kept with the job (``replicate``)
    when it was created through these routes, so its webhooks render without a request."""

    base_url: str  # the API's root as the client reached it, without a trailing slash
    model: str  # owner/name
    version: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# -- requests --------------------------------------------------------------------------
def parse_model_ref(ref: str) -> tuple[str, str, str | None]:
    """``owner/name[:version]`` → (owner, name, version); a bare version id → ('', '', id)."""
    if "/" not in ref:
        return "", "", ref
    owner, _, rest = ref.partition("/")
    name, _, version = rest.partition(":")
    return owner, name, version or None


def our_events(events: list[str] | None) -> list[str] | None:
    """Replicate's ``webhook_events_filter`` as ours (None: our default, which is Replicate's
    ``start`` + ``output`` + ``completed``)."""
    if events is None:
        return None
    wanted = {ours for event in events for ours in EVENT_FILTERS[event]}
    return [event for event in WEBHOOK_EVENTS if event in wanted]


def their_events(events: list[str] | None) -> list[str]:
    """Our stored filter as the fewest Replicate events that name it (reading a prediction back):
    ``output`` is part of ``completed`` here, so ``["output", "completed"]`` reads ``["completed"]``."""
    chosen = set(events or DEFAULT_WEBHOOK_EVENTS)
    covered: set[str] = set()
    names: set[str] = set()
    for name in ("completed", "start", "output", "logs"):  # the widest first
        ours = set(EVENT_FILTERS[name])
        if ours <= chosen and not ours <= covered:
            names.add(name)
            covered |= ours
    return [name for name in EVENT_FILTERS if name in names]


def job_body(request: ModelPredictionRequest, model: str) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body a prediction request stands for."""
    job_input = request.input.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    for ours, theirs in RENAMED.items():
        if theirs in job_input:
            job_input[ours] = job_input.pop(theirs)
    body: dict[str, Any] = {**job_input, "model": model}
    if request.webhook is not None:
        body["webhook"] = request.webhook
    if request.webhook_events_filter is not None:
        body["webhook_events_filter"] = our_events(list(request.webhook_events_filter))
    return body


def as_prediction_error(exc: ValidationFailed) -> ValidationFailed:
    """A job's validation error, its fields named as the prediction request names them
    (``width`` → ``input.width``, ``num_images`` → ``input.num_outputs``)."""
    errors = [FieldError(_prediction_field(e.field), e.message) for e in exc.errors]
    return ValidationFailed(exc.detail, errors)


def _prediction_field(field: str) -> str:
    if field in ("webhook", "webhook_events_filter", "body"):
        return field
    return "input." + RENAMED.get(field, field)


# -- predictions -----------------------------------------------------------------------
def render_prediction(
    record: JobRecord, at: Addressing, *, output_secret: str | None = None, pending_as_starting: bool = False
) -> dict[str, Any]:
    """The job as a Replicate prediction. ``output_secret`` (the tenant's webhook secret) signs the
    output URLs (``?sig=``: they then work without a key, see ``output_signature``).
    ``pending_as_starting``: a job not yet terminal reads ``starting`` (the answer to ``Prefer:
    wait`` when the wait ran out: Replicate's clients take any other status there as finished)."""
    status = STATUSES[record.status]
    if pending_as_starting and not record.status.is_terminal():
        status = "starting"
    link = f"{at.base_url}/v1/predictions/{record.id}"
    done = record.status is JobStatus.SUCCEEDED
    return {
        "id": record.id,
        "model": at.model,
        "version": at.version,
        "status": status,
        "input": {RENAMED.get(name, name): value for name, value in record.input.items()},
        "output": [output_url(link, record.id, n, output_secret) for n in range(len(record.outputs))] if done else None,
        "logs": progress_logs(record.progress_step, record.progress_total),
        "error": f"{record.error['type']}: {record.error['message']}" if record.error else None,
        "metrics": prediction_metrics(record),
        "created_at": rfc3339(record.created_at),
        "started_at": rfc3339(record.started_at),
        "completed_at": rfc3339(record.completed_at),
        "urls": {"get": link, "cancel": f"{link}/cancel", "stream": f"{link}/stream"},
        "source": "api",
        "data_removed": False,
        "webhook": record.webhook,
        "webhook_events_filter": their_events(record.webhook_events_filter) if record.webhook else None,
    }


def render_prediction_event(event: dict[str, Any], output_secret: str | None = None) -> dict[str, Any] | None:
    """A webhook body for a job created through the Replicate routes: the prediction as it was
    at the event (Replicate's webhooks carry the prediction itself); None for other jobs."""
    record = JobRecord.from_hash(event["job"])
    if record.replicate is None:
        return None
    return render_prediction(record, Addressing(**record.replicate), output_secret=output_secret)


def output_url(link: str, job_id: str, index: int, secret: str | None) -> str:
    """Image ``index`` of the prediction at ``link``; with ``secret``, signed (``?sig=``)."""
    url = f"{link}/output/{index}"
    return f"{url}?sig={output_signature(secret, job_id, index)}" if secret else url


def output_signature(secret: str, job_id: str, index: int) -> str:
    """What makes an output URL work without a key: HMAC-SHA256 of the job and image, keyed
    with the tenant's webhook secret (a message no webhook signature has the shape of). Such a
    URL is valid as long as the job is kept and the secret is current (or the previous one in a
    rotation window): rotating the tenant's secret revokes every URL given out before. Replicate's
    JavaScript client and a browser's ``<img>`` fetch outputs without the API key."""
    message = f"dq-output\0{job_id}\0{index}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def valid_output_signature(secrets: list[str], job_id: str, index: int, signature: str) -> bool:
    return any(hmac.compare_digest(output_signature(s, job_id, index), signature) for s in secrets)


def progress_logs(step: int, total: int) -> str:
    """A tqdm-style progress line (what Cog models print), or '' before the first step."""
    if step <= 0 or total <= 0:
        return ""
    percent = min(100, step * 100 // total)
    bar = ("█" * (percent // 10)).ljust(10)
    return f"{percent:3d}%|{bar}| {step}/{total}\n"


def prediction_metrics(record: JobRecord) -> dict[str, float]:
    """``predict_time`` (the generation itself) and ``total_time`` (from creation), once known."""
    metrics: dict[str, float] = {}
    if record.generation_seconds is not None:
        metrics["predict_time"] = round(record.generation_seconds, 4)
    elif record.started_at is not None and record.completed_at is not None:
        metrics["predict_time"] = round(record.completed_at - record.started_at, 4)
    if record.completed_at is not None:
        metrics["total_time"] = round(record.completed_at - record.created_at, 4)
    return metrics


def prediction_stream_events(
    raw_event: dict[str, Any], at: Addressing, output_secret: str | None = None
) -> list[tuple[str, str]]:
    """One of our events as Replicate's SSE messages, (event, data): ``logs`` per step, then the
    ``output`` URLs, an ``error``, and ``done`` (``{}``, or ``{"reason": "canceled"|"error"}``)."""
    kind = str(raw_event["type"]).removeprefix("job.")
    record = JobRecord.from_hash(raw_event["job"])
    prediction = render_prediction(record, at, output_secret=output_secret)
    if kind == "progress":
        return [("logs", prediction["logs"].rstrip("\n"))]
    if kind == "succeeded":
        return [*(("output", url) for url in prediction["output"]), ("done", "{}")]
    if kind == "failed":
        return [("error", prediction["error"] or "failed"), ("done", '{"reason":"error"}')]
    if kind == "canceled":
        return [("done", '{"reason":"canceled"}')]
    return []


# -- models and versions ---------------------------------------------------------------
def render_model(info: ModelInfo, owner: str, base_url: str, version: dict[str, Any]) -> dict[str, Any]:
    return {
        "url": f"{base_url}/v1/models/{owner}/{info.name}",
        "owner": owner,
        "name": info.name,
        "description": f"{info.pipeline_class} ({info.backend}"
        + (f", compiled for {info.widths[0]}x{info.heights[0]})" if info.static else ")"),
        "visibility": "private",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "run_count": 0,
        "cover_image_url": None,
        "default_example": None,
        "latest_version": version,
    }


def render_version(info: ModelInfo, version_id: str, written_at: float) -> dict[str, Any]:
    return {
        "id": version_id,
        "created_at": rfc3339(written_at),
        "cog_version": COG_VERSION,
        "openapi_schema": version_schema(info),
    }


def version_schema(info: ModelInfo) -> dict[str, Any]:
    """A Cog-style document: ``components.schemas.Input`` lists what ``info`` accepts, its
    static shapes and schedulers as enums; ``Output`` is a list of image URLs."""
    output = {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}
    return {
        "openapi": "3.0.2",
        "info": {"title": info.name, "version": COG_VERSION},
        "paths": {},
        "components": {"schemas": {"Input": input_schema(info), "Output": output}},
    }


def input_schema(info: ModelInfo) -> dict[str, Any]:
    schema = PredictionInput.model_json_schema()
    props: dict[str, Any] = {name: _without_null(prop) for name, prop in schema["properties"].items()}
    for side, allowed, default in (
        ("width", info.widths, info.default_width),
        ("height", info.heights, info.default_height),
    ):
        if info.static:
            props[side] = {"type": "integer", "enum": list(allowed), "default": default}
        else:
            props[side] = {
                "type": "integer",
                "minimum": 64,
                "maximum": info.max_side,
                "multipleOf": 8,
                "default": default,
            }
    props["num_outputs"] = {"type": "integer", "enum": list(info.num_images), "default": info.num_images[0]}
    if info.schedulers:
        props["scheduler"] = {"type": "string", "enum": list(info.schedulers)}
        if info.default_scheduler:
            props["scheduler"]["default"] = info.default_scheduler
    else:
        props.pop("scheduler")
    if info.requires_guidance_above_one:
        props["guidance_scale"]["exclusiveMinimum"] = 1
    for order, prop in enumerate(props.values()):
        prop["x-order"] = order
    return {"title": "Input", "type": "object", "properties": props, "required": schema.get("required", [])}


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema without its ``null`` branch (omit the field instead)."""
    options = [option for option in prop.get("anyOf", []) if option != {"type": "null"}]
    merged = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**options[0], **merged} if len(options) == 1 else merged


# -- version ids -----------------------------------------------------------------------
_versions: dict[str, tuple[tuple[tuple[str, int, int], ...], str, float]] = {}
_versions_lock = threading.Lock()


def artifact_version(path: Path) -> tuple[str, float]:
    """(the SHA-256 of the model's name and of every file under ``path``, names and bytes; when
    it was last written). The name is in it so that two copies of one artifact served under two
    names are two versions (a version id alone names its model, as on Replicate). Hashed once
    per change of the files' names, sizes or mtimes (a compiled model is large)."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    signature = tuple((str(p.relative_to(path)), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    with _versions_lock:
        cached = _versions.get(str(path))
    if cached is not None and cached[0] == signature:
        return cached[1], cached[2]
    digest = hashlib.sha256(path.name.encode() + b"\0")
    for file in files:
        digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
    written_at = max((entry[2] for entry in signature), default=0) / 1e9 or os.stat(path).st_mtime
    with _versions_lock:
        _versions[str(path)] = (signature, digest.hexdigest(), written_at)
    return digest.hexdigest(), written_at
