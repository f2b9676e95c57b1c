"""Every error leaves as ``application/problem+json`` (RFC 9457); mapped here and only here."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, json
from pydantic import BaseModel, ConfigDict, Field
from werkzeug.exceptions import HTTPException

from jobs.errors import DQError

log = logging.getLogger("dq.api")
PROBLEM_BASE = "https://diffusion-queue.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class ProblemField(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="the field, query parameter or header at fault (`input.width`, `Idempotency-Key`)")
    message: str


class Problem(BaseModel):
    """An error (RFC 9457); ``errors`` names each bad field of a validation error."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description=f"{PROBLEM_BASE}<slug>: what kind of error, e.g. `validation`, `rate-limited`")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    errors: list[ProblemField] = Field(default_factory=list)
    retry_after: int | None = Field(default=None, description="in a batch answer's item: seconds, as Retry-After")


def problem(status: int, title: str, detail: str, slug: str, **extra: Any) -> Response:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_MEDIA_TYPE)


def problem_body(exc: DQError) -> dict[str, Any]:
    """A domain error as a problem+json object (also one item of a batch answer)."""
    body: dict[str, Any] = {"type": PROBLEM_BASE + exc.slug, "title": exc.title, "status": exc.status}
    body["detail"] = exc.detail
    if exc.errors:
        body["errors"] = [e.as_dict() for e in exc.errors]
    if "Retry-After" in exc.headers:
        body["retry_after"] = int(exc.headers["Retry-After"])
    return body


def init_app(app: Flask) -> None:
    @app.errorhandler(DQError)
    def _domain(exc: DQError) -> Response:
        body = problem_body(exc)
        body.pop("retry_after", None)  # the header says it
        response = Response(json.dumps(body), status=exc.status, mimetype="application/problem+json")
        if exc.status == 503:
            response.headers["Retry-After"] = "5"
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError) -> Response:
        log.warning("redis unavailable: %s", exc)
        response = problem(503, "Service unavailable", "the job store is unreachable; retry shortly", "unavailable")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        slug = {413: "too-large", 404: "not-found", 405: "method-not-allowed", 415: "unsupported-media-type"}
        response = problem(status, exc.name, exc.description or exc.name, slug.get(status, "http-error"))
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged", "internal")
