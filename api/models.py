"""``/v1/models`` and ``/v1/workers``: capabilities read from the artifacts, live worker counts."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import admin_only
from api.services import services
from jobs.workers import count_by_model

bp = Blueprint("models", __name__, url_prefix="/v1")


@bp.get("/models")
def list_models() -> Response:
    svc = services()
    counts = count_by_model(svc.workers.live())
    data = []
    for info in svc.catalog.all():
        item = info.public()
        c = counts.get(info.name, {"ready": 0, "busy": 0, "loading": 0})
        item["workers"] = c
        item["queue_depth"] = svc.store.queue_depth(info.name)
        item["default"] = info.name == svc.settings.default_model
        data.append(item)
    return jsonify({"data": data})


@bp.get("/workers")
@admin_only
def list_workers() -> Response:
    """Admin only: it names the jobs each worker runs."""
    return jsonify({"data": [w.public() for w in services().workers.live()]})
