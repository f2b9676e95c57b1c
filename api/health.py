"""Liveness and readiness."""

from __future__ import annotations

import redis
from flask import Blueprint

from api.errors import problem
from api.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    try:
        services().redis.ping()
    except redis.RedisError as exc:
        response = problem(503, "Not ready", f"redis unreachable: {exc}", "unavailable")
        response.headers["Retry-After"] = "5"
        return response
    return {"status": "ready"}
