"""Flask application factory: ``create_app(settings)``. Nothing connects at import time."""

from __future__ import annotations

import logging
import re

from flask import Flask
from werkzeug.routing import BaseConverter

from api import auth, console, deliveries, docs, errors, health, jobs, keys, metrics, models, replicate
from api.services import Services
from jobs.logs import configure_logging
from jobs.settings import Settings


class JobIdConverter(BaseConverter):
    """``<jobid:job_id>``: a job id (32 hex digits), so ``/v1/jobs/batch`` is never read as one."""

    regex = "[0-9a-f]{32}"


def owner_converter(owner: str) -> type[BaseConverter]:
    """``<owner:owner>``: exactly ``DQ_MODEL_OWNER``, so ``/v1/models/<owner>/<name>`` (Replicate's)
    never takes ``/v1/models/<name>/pause`` (ours); another owner is a 404."""
    return type("OwnerConverter", (BaseConverter,), {"regex": re.escape(owner)})


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    # Under gunicorn: our lines (the job transitions this process makes) and others' warnings.
    configure_logging(settings, logging.WARNING)
    app = Flask(__name__, static_folder=None)  # the console serves its own files (api/console.py)
    app.url_map.converters["jobid"] = JobIdConverter
    app.url_map.converters["owner"] = owner_converter(settings.model_owner)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    Services.init_app(app, settings)
    errors.init_app(app)
    auth.init_app(app, settings)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(replicate.bp)
    app.register_blueprint(keys.bp)
    deliveries.init_app(app)
    app.register_blueprint(docs.bp)
    app.register_blueprint(console.bp)
    metrics.init_app(app)
    return app
