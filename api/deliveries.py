"""``/v1/jobs/<id>/deliveries``: a job's webhook delivery attempts, and redelivery."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.contract import Answer, contract
from api.jobs import find_job
from jobs.errors import DeliveryNotFound, JobNotFound
from jobs.view import EventType
from webhooks.outbox import Outbox

bp = Blueprint("deliveries", __name__, url_prefix="/v1/jobs")


class DeliveryView(BaseModel):
    """One attempt to deliver one message (``webhooks/deliver.py`` writes it)."""

    model_config = ConfigDict(extra="forbid")

    delivery_id: str = Field(description="the message's `webhook-id`, the same on every attempt")
    event: EventType
    attempt: int = Field(ge=1, description="per message, from 1")
    at: datetime
    status_code: int | None = Field(description="null without a response")
    latency_ms: float
    outcome: Literal["delivered", "retrying", "failed", "gone", "given_up", "refused"]
    error: str | None
    next_attempt_at: datetime | None


class DeliveryPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: list[DeliveryView]


class Redelivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery_id: str
    job_id: str
    status: Literal["queued"]


def init_app(app: Flask) -> None:
    svc = app.extensions["dq"]
    app.extensions["dq.outbox"] = Outbox(svc.redis, svc.store.keys, retention_s=svc.settings.job_retention_s)
    app.register_blueprint(bp)


def outbox() -> Outbox:
    found: Outbox = current_app.extensions["dq.outbox"]
    return found


@bp.get("/<jobid:job_id>/deliveries")
@contract("List a job's webhook deliveries", responses={200: DeliveryPage}, errors=(JobNotFound,), tag="webhooks")
def list_deliveries(job_id: str) -> Response:
    """Every attempt, oldest first."""
    find_job(job_id)
    return jsonify({"data": outbox().deliveries(job_id)})


@bp.post("/<jobid:job_id>/deliveries/<delivery_id>/redeliver")
@contract(
    "Redeliver a webhook message",
    responses={202: Answer(Redelivery, "queued again", ("Location",))},
    errors=(JobNotFound, DeliveryNotFound),
    tag="webhooks",
)
def redeliver(job_id: str, delivery_id: str) -> Response:
    """Queue the message again with the same webhook-id; its attempts count from 1 again."""
    find_job(job_id)
    if not outbox().redeliver(job_id, delivery_id, time.time()):
        raise DeliveryNotFound(f"job {job_id} has no webhook message {delivery_id!r}")
    response = jsonify({"delivery_id": delivery_id, "job_id": job_id, "status": "queued"})
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job_id}/deliveries"
    return response
