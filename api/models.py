"""``/v1/models`` and ``/v1/workers``: capabilities read from the artifacts, live worker counts,
and pausing a model (admin)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from api.auth import admin_only
from api.services import services
from jobs.capabilities import ModelInfo
from jobs.errors import ModelNotFound
from jobs.workers import count_by_model

bp = Blueprint("models", __name__, url_prefix="/v1")


@bp.get("/models")
def list_models() -> Response:
    counts = count_by_model(services().workers.live())
    return jsonify({"data": [_model_view(info, counts) for info in services().catalog.all()]})


@bp.post("/models/<name>/pause")
@admin_only
def pause_model(name: str) -> Response:
    """Workers take nothing new from this model; queued jobs stay queued, running ones finish."""
    return _set_paused(name, True)


@bp.post("/models/<name>/resume")
@admin_only
def resume_model(name: str) -> Response:
    return _set_paused(name, False)


def _set_paused(name: str, paused: bool) -> Response:
    svc = services()
    info = svc.catalog.get(name)
    if info is None:
        raise ModelNotFound(f"no model {name!r}")
    svc.store.set_paused(name, paused)
    return jsonify(_model_view(info, count_by_model(svc.workers.live())))


def _model_view(info: ModelInfo, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    svc = services()
    item = info.public()
    item["workers"] = counts.get(info.name, {"ready": 0, "busy": 0, "loading": 0})
    item["queue_depth"] = svc.store.queue_depth(info.name)
    item["paused"] = svc.store.paused(info.name)
    item["default"] = info.name == svc.settings.default_model
    return item


@bp.get("/workers")
@admin_only
def list_workers() -> Response:
    """Admin only: it names the jobs each worker runs."""
    return jsonify({"data": [w.public() for w in services().workers.live()]})
