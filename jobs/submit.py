"""Turn a validated request into a job's normalised input: plain functions, no I/O."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from jobs.capabilities import ModelCatalog, resolve_shape, scheduler_errors
from jobs.errors import FieldError, ValidationFailed
from jobs.models import MAX_SEED, JobRequest


@dataclass(frozen=True)
class PreparedJob:
    model: str
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    webhook: str | None
    webhook_events_filter: list[str] | None
    request_hash: str
    priority: str = "normal"
    batch_class: str = ""  # '' unless the model runs a static batch of several prompts


def batch_class(job_input: dict[str, Any]) -> str:
    """What jobs must share to run in one static-batch call: steps, guidance, shape, images per
    prompt and scheduler (their prompts, negative prompts and seeds may differ)."""
    parts = [job_input.get(name) for name in ("num_inference_steps", "guidance_scale", "width", "height")]
    parts += [job_input.get("num_images"), job_input.get("scheduler") or ""]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def new_job_id() -> str:
    return uuid.uuid4().hex


def request_hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


Schema = TypeVar("Schema", bound=BaseModel)


def parse_body(schema: type[Schema], body: Any) -> Schema:
    """``body`` validated by ``schema``; ``ValidationFailed`` names every bad field."""
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object", [FieldError("body", "expected an object")])
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        errors = [FieldError(_field_name(e["loc"]), _message(e)) for e in exc.errors()]
        summary = f"{len(errors)} invalid field(s): " + ", ".join(e.field for e in errors)
        raise ValidationFailed(summary, errors) from None


def parse_request(body: Any) -> JobRequest:
    return parse_body(JobRequest, body)


def prepare_job(
    body: Any,
    catalog: ModelCatalog,
    default_model: str,
    *,
    ttl_s: int = 86_400,
    timeout_s: int = 600,
) -> PreparedJob:
    """Validate ``body`` against the schema and the model's compiled shapes; fill defaults."""
    request = parse_request(body)
    model_name = request.model or default_model
    info = catalog.get(model_name)
    if info is None:
        known = ", ".join(sorted(m.name for m in catalog.all())) or "none"
        raise ValidationFailed(
            f"unknown model {model_name!r}", [FieldError("model", f"unknown model {model_name!r}; known: {known}")]
        )
    shape, errors = resolve_shape(info, request.width, request.height, request.num_images, request.guidance_scale)
    errors = [*errors, *scheduler_errors(info, request.scheduler)]
    if shape is None or errors:
        raise ValidationFailed(f"model {model_name!r} cannot run this request: " + errors[0].message, errors)
    drawn = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    job_input = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "seed": drawn,
        "width": shape.width,
        "height": shape.height,
        "num_images": shape.num_images,
        "output_format": request.output_format,
        "ttl_seconds": request.ttl_seconds if request.ttl_seconds is not None else ttl_s,
        "timeout_seconds": request.timeout_seconds if request.timeout_seconds is not None else timeout_s,
    }
    if request.scheduler is not None:  # omitted: the model's own scheduler
        job_input["scheduler"] = request.scheduler
    return PreparedJob(
        model=model_name,
        input=job_input,
        metadata=request.metadata,
        webhook=request.webhook,
        webhook_events_filter=list(request.webhook_events_filter) if request.webhook_events_filter else None,
        request_hash=request_hash(body),
        priority=request.priority,
        batch_class=batch_class(job_input) if info.static and info.batch_size > 1 else "",
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "field required"
    return str(error["msg"])
