"""The job contract both sides import: status, request schema, and the public view.

No Flask, no torch, no Redis here: plain data and pydantic.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_SEED = 4_294_967_295
MAX_METADATA_BYTES = 4096
WEBHOOK_EVENTS = ("started", "progress", "succeeded", "failed", "canceled")
DEFAULT_WEBHOOK_EVENTS = ("started", "succeeded", "failed", "canceled")
OUTPUT_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def _integral(value: Any) -> Any:
    """JSON has one kind of number: ``20.0`` is the integer 20 (as JSON Schema says), ``20.5`` is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field of a strict model that also takes 20.0, as the OpenAPI document's `integer` does.
Integer = Annotated[int, BeforeValidator(_integral)]


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs``; shape limits of the chosen model are checked separately."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"prompt": "a pig with wings", "num_inference_steps": 20, "seed": 42, "output_format": "webp"},
                {
                    "prompt": "a lighthouse at dusk",
                    "negative_prompt": "blurry",
                    "num_images": 2,
                    "metadata": {"order": 7},
                },
            ]
        },
    )

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str | None = Field(default=None, max_length=2000)
    model: str | None = Field(default=None, min_length=1, max_length=128)
    num_inference_steps: Integer = Field(default=20, ge=1, le=150)
    guidance_scale: float = Field(default=7.5, ge=0, le=30)
    seed: Integer | None = Field(default=None, ge=0, le=MAX_SEED)
    width: Integer | None = Field(default=None, ge=8, le=4096, multiple_of=8)
    height: Integer | None = Field(default=None, ge=8, le=4096, multiple_of=8)
    num_images: Integer | None = Field(default=None, ge=1, le=8)
    output_format: Literal["png", "jpeg", "webp"] = "png"
    priority: Literal["low", "normal", "high"] = "normal"  # at most the key's max_priority
    scheduler: str | None = Field(default=None, min_length=1, max_length=64)  # omitted: the model's own
    ttl_seconds: Integer | None = Field(default=None, ge=1, le=7 * 86_400)  # may wait queued this long
    timeout_seconds: Integer | None = Field(default=None, ge=1, le=86_400)  # may run this long
    metadata: dict[str, Any] | None = None
    webhook: str | None = Field(default=None, max_length=2048)
    webhook_events_filter: list[Literal["started", "progress", "succeeded", "failed", "canceled"]] | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            size = len(json.dumps(value, separators=(",", ":")))
        except RecursionError:
            raise ValueError("is nested too deeply") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"must serialise to at most {MAX_METADATA_BYTES} bytes of JSON")
        return value

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be an absolute http(s) URL")
        return value

    @field_validator("webhook_events_filter")
    @classmethod
    def _unique_events(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) == 0:
            raise ValueError("must name at least one event")
        return value


def rfc3339(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def output_extension(output_format: str) -> str:
    return "jpg" if output_format == "jpeg" else output_format
