"""``/v1/jobs/<id>/deliveries``: a job's webhook delivery attempts, and redelivery."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, jsonify

from api.jobs import find_job
from jobs.errors import DeliveryNotFound
from webhooks.outbox import Outbox

bp = Blueprint("deliveries", __name__, url_prefix="/v1/jobs")


def init_app(app: Flask) -> None:
    svc = app.extensions["dq"]
    app.extensions["dq.outbox"] = Outbox(svc.redis, svc.store.keys, retention_s=svc.settings.job_retention_s)
    app.register_blueprint(bp)


def outbox() -> Outbox:
    found: Outbox = current_app.extensions["dq.outbox"]
    return found


@bp.get("/<job_id>/deliveries")
def list_deliveries(job_id: str) -> Response:
    """Every attempt, oldest first: delivery_id (= webhook-id), event, attempt, at, status_code,
    latency_ms, outcome, error, next_attempt_at."""
    find_job(job_id)
    return jsonify({"data": outbox().deliveries(job_id)})


@bp.post("/<job_id>/deliveries/<delivery_id>/redeliver")
def redeliver(job_id: str, delivery_id: str) -> Response:
    """Queue the message again with the same webhook-id; its attempts count from 1 again."""
    find_job(job_id)
    if not outbox().redeliver(job_id, delivery_id, time.time()):
        raise DeliveryNotFound(f"job {job_id} has no webhook message {delivery_id!r}")
    response = jsonify({"delivery_id": delivery_id, "job_id": job_id, "status": "queued"})
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job_id}/deliveries"
    return response
