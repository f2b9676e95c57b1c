"""``GET /metrics``: Prometheus metrics, for an admin key (Prometheus sends it as a bearer token).

Two parts in one exposition:

- per route, this API's own requests: ``dq_http_requests_total`` and
  ``dq_http_request_duration_seconds`` by route rule, method and status. Under gunicorn each
  worker process counts its own; with ``PROMETHEUS_MULTIPROC_DIR`` set (``api/gunicorn_conf.py``
  sets it) prometheus-client's multiprocess mode sums them, so any process answers for all;
- the fleet (queues, workers, job outcomes and phase histograms, webhooks), read from Redis at
  scrape time (``jobs/metrics.py``): the same from whichever API process or host answers.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import RootModel

from api.auth import admin_only
from api.contract import Answer, contract
from api.services import Services
from jobs.metrics import FleetCollector

bp = Blueprint("metrics", __name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client itself, at import
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_LABELS = ("route", "method", "status")
UNMATCHED = "<unmatched>"  # a path no route matched (404): one label value, not the path

# Created once per process; in multiprocess mode their values live in the shared directory.
HTTP_REGISTRY = CollectorRegistry()
REQUESTS = Counter("dq_http_requests", "API requests by route", HTTP_LABELS, registry=HTTP_REGISTRY)
LATENCY = Histogram(
    "dq_http_request_duration_seconds",
    "API request latency by route (to the response's return; streams: to their first byte)",
    HTTP_LABELS,
    buckets=HTTP_BUCKETS_S,
    registry=HTTP_REGISTRY,
)


class MetricsText(RootModel[str]):
    """The Prometheus text exposition format."""


def init_app(app: Flask) -> None:
    """Time every request, and serve ``/metrics``."""
    app.before_request(_start_timer)
    app.after_request(_observe)
    svc: Services = app.extensions["dq"]

    def models() -> list[str]:  # every model served or ever queued
        return [m.name for m in svc.catalog.all()] + svc.store.models_with_jobs()

    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetCollector(svc.redis, svc.store.keys, models, time.time))
    app.extensions["dq.metrics"] = fleet
    app.register_blueprint(bp)


def _start_timer() -> None:
    g.dq_request_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.get("dq_request_started")
    if started is not None:
        rule = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        labels = (rule, request.method, str(response.status_code))
        REQUESTS.labels(*labels).inc()
        LATENCY.labels(*labels).observe(time.perf_counter() - started)
    return response


def http_registry() -> CollectorRegistry:
    """This process's request metrics, or every gunicorn worker's in multiprocess mode."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return HTTP_REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return registry


@bp.get("/metrics")
@contract(
    "Prometheus metrics",
    responses={200: Answer(MetricsText, "the exposition", media_type=CONTENT_TYPE_LATEST.split(";")[0])},
    tag="meta",
)
@admin_only
def metrics() -> Response:
    """Per route (this API's requests), per model (queue, oldest job, workers by state, backlog per
    ready worker, duty cycle, job outcomes and phase histograms), per worker and for webhooks;
    names and labels in docs/operations.md. Prometheus sends the admin key as a bearer token."""
    fleet: CollectorRegistry = current_app.extensions["dq.metrics"]
    body = generate_latest(http_registry()) + generate_latest(fleet)
    return Response(body, content_type=CONTENT_TYPE_LATEST)
