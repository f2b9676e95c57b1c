"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

import redis
from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from api.contract import Answer, contract
from api.errors import PROBLEM_MEDIA_TYPE, Problem, problem
from api.services import services

bp = Blueprint("health", __name__)


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


@bp.get("/healthz")
@contract("Liveness", responses={200: Health})
def healthz() -> Response:
    """The process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@contract(
    "Readiness",
    responses={
        200: Ready,
        503: Answer(Problem, "Redis unreachable", ("Retry-After",), media_type=PROBLEM_MEDIA_TYPE),
    },
)
def readyz() -> Response:
    """Ready when Redis answers."""
    try:
        services().redis.ping()
    except redis.RedisError as exc:
        response = problem(503, "Not ready", f"redis unreachable: {exc}", "unavailable")
        response.headers["Retry-After"] = "5"
        return response
    return jsonify({"status": "ready"})
