"""Request schema: every field's bounds, unknown fields, types."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.errors import ValidationFailed
from jobs.models import JobStatus, rfc3339
from jobs.submit import parse_request, request_hash

VALID: dict[str, Any] = {"prompt": "a pig with wings"}


def fields_of(exc: ValidationFailed) -> list[str]:
    return [e.field for e in exc.errors]


def test_minimal_request_gets_defaults() -> None:
    req = parse_request(VALID)
    assert req.num_inference_steps == 20
    assert req.guidance_scale == 7.5
    assert req.output_format == "png"
    assert req.seed is None and req.width is None and req.num_images is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 151}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"num_inference_steps": "20"}, "num_inference_steps"),
        ({"num_inference_steps": True}, "num_inference_steps"),
        ({"guidance_scale": -0.1}, "guidance_scale"),
        ({"guidance_scale": 30.5}, "guidance_scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 4_294_967_296}, "seed"),
        ({"width": 100}, "width"),
        ({"height": 63}, "height"),
        ({"width": 0}, "width"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 9}, "num_images"),
        ({"output_format": "gif"}, "output_format"),
        ({"metadata": {"blob": "x" * 5000}}, "metadata"),
        ({"metadata": ["not", "an", "object"]}, "metadata"),
        ({"webhook": "ftp://example.com/hook"}, "webhook"),
        ({"webhook": "not a url"}, "webhook"),
        ({"webhook_events_filter": ["started", "exploded"]}, "webhook_events_filter.1"),
        ({"webhook_events_filter": []}, "webhook_events_filter"),
        ({"negative_prompt": "y" * 2001}, "negative_prompt"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_field_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_request({**VALID, **change})
    assert field in fields_of(info.value)
    assert info.value.status == 422


def test_missing_prompt_is_named() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_request({"seed": 1})
    assert fields_of(info.value) == ["prompt"]
    assert info.value.errors[0].message == "field required"


def test_body_must_be_an_object() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_request(["prompt"])
    assert fields_of(info.value) == ["body"]


def test_integer_guidance_scale_is_accepted() -> None:
    assert parse_request({**VALID, "guidance_scale": 7}).guidance_scale == 7.0


def test_request_hash_ignores_key_order() -> None:
    assert request_hash({"a": 1, "b": [1, 2]}) == request_hash({"b": [1, 2], "a": 1})
    assert request_hash({"a": 1}) != request_hash({"a": 2})


def test_terminal_statuses() -> None:
    assert [s.value for s in JobStatus if s.is_terminal()] == ["succeeded", "failed", "canceled"]


def test_rfc3339_is_utc_with_z() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(None) is None
