"""The long-lived clients the API uses, created once per app and closed with it."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask, current_app

from jobs.capabilities import ModelCatalog
from jobs.keys import Keys
from jobs.settings import Settings
from jobs.storage import S3Storage
from jobs.store import JobStore
from jobs.workers import WorkerRegistry


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    workers: WorkerRegistry
    catalog: ModelCatalog
    storage: S3Storage

    @classmethod
    def init_app(cls, app: Flask, settings: Settings) -> Services:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )  # no retries here: a client told 503 retries itself (with its Idempotency-Key)
        keys = Keys(settings.key_prefix)
        services = cls(
            settings=settings,
            redis=client,
            store=JobStore(client, keys, retention_s=settings.job_retention_s),
            workers=WorkerRegistry(client, keys),
            catalog=ModelCatalog(settings.models_dir),
            storage=S3Storage(settings),
        )
        app.extensions["dq"] = services
        return services


def services() -> Services:
    found: Services = current_app.extensions["dq"]
    return found
