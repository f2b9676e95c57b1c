"""``/v1/models`` and ``/v1/workers``: capabilities read from the artifacts, live worker counts,
and pausing a model (admin)."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.auth import admin_only
from api.contract import contract
from api.services import services
from jobs.capabilities import ModelInfo
from jobs.errors import ModelNotFound
from jobs.workers import count_by_model

bp = Blueprint("models", __name__, url_prefix="/v1")
WorkerState = Literal["loading", "ready", "busy", "stalled", "stopping"]  # jobs.workers.WORKER_STATES


class View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SideRange(View):
    min: int
    max: int
    multiple_of: int


class StaticShapes(View):
    """A compiled (Neuron) model: exactly these values."""

    widths: list[int]
    heights: list[int]
    num_images: list[int]


class DynamicShapes(View):
    """A plain diffusers model: any multiple of 8 in the range."""

    widths: SideRange
    heights: SideRange
    num_images: list[int]


class WorkerCounts(View):
    ready: int
    busy: int
    loading: int


class ModelView(View):
    """What a model can run (read from its artifact), and who serves it now."""

    name: str
    backend: str = Field(description="`neuron` (compiled graphs) or `diffusers` (plain weights)")
    pipeline_class: str
    vae_scale_factor: int
    default_width: int
    default_height: int
    static: bool = Field(description="shapes fixed at compile time")
    widths: list[int]
    heights: list[int]
    num_images: list[int]
    batch_size: int
    max_side: int
    compiler_version: str | None
    auto_cast: str | None
    auto_cast_type: str | None
    requires_guidance_above_one: bool
    schedulers: list[str] = Field(description="values a job's `scheduler` may take")
    default_scheduler: str | None
    shapes: StaticShapes | DynamicShapes
    workers: WorkerCounts
    queue_depth: int = Field(ge=0, description="jobs waiting to be picked")
    paused: bool = Field(description="workers take nothing new from it (admin: pause / resume)")
    default: bool = Field(description="the model a job without `model` runs on")


class ModelPage(View):
    data: list[ModelView]


class WorkerView(View):
    """A live worker process (``jobs.workers.WorkerInfo``), as its last heartbeat said."""

    name: str
    host: str
    pid: int
    model: str
    backend: str
    cores: str
    state: WorkerState
    visible_cores: str
    current_job: str = Field(description="the job it runs, or empty")
    last_pipeline_seconds: float | None
    started_at: float = Field(description="Unix seconds")
    ready_at: float | None
    jobs_done: int
    heartbeat_at: float
    busy_since: float | None = Field(description="Unix seconds its current pipeline call began (null: idle)")
    busy_seconds: float = Field(description="time this process spent generating")
    duty_cycle: float = Field(ge=0, le=1, description="fraction of the last minute spent generating")
    restarts: int = Field(ge=0, description="times its launcher restarted this slot before this process")


class WorkerPage(View):
    data: list[WorkerView]


@bp.get("/models")
@contract("List models", responses={200: ModelPage})
def list_models() -> Response:
    """Each model under ``DQ_MODELS_DIR``: shapes, schedulers, live workers, queue depth, paused."""
    counts = count_by_model(services().workers.live())
    return jsonify({"data": [_model_view(info, counts) for info in services().catalog.all()]})


@bp.post("/models/<name>/pause")
@contract("Pause a model", responses={200: ModelView}, errors=(ModelNotFound,))
@admin_only
def pause_model(name: str) -> Response:
    """Workers take nothing new from this model; queued jobs stay queued, running ones finish."""
    return _set_paused(name, True)


@bp.post("/models/<name>/resume")
@contract("Resume a model", responses={200: ModelView}, errors=(ModelNotFound,))
@admin_only
def resume_model(name: str) -> Response:
    """Workers take the model's jobs again."""
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
@contract("List live workers", responses={200: WorkerPage})
@admin_only
def list_workers() -> Response:
    """Admin only: it names the jobs each worker runs."""
    return jsonify({"data": [w.public() for w in services().workers.live()]})
