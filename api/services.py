"""The long-lived clients the API uses, created once per app and closed with it."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import redis
from flask import Flask, current_app

from jobs.capabilities import ModelCatalog
from jobs.connections import Role, create_redis
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
        client = create_redis(settings, Role.API)
        keys = Keys(settings.key_prefix)
        services = cls(
            settings=settings,
            redis=client,
            store=JobStore(
                client,
                keys,
                retention_s=settings.job_retention_s,
                progress_event_interval_s=settings.progress_event_interval_s,
            ),
            workers=WorkerRegistry(client, keys),
            catalog=ModelCatalog(settings.models_dir),
            storage=S3Storage(settings),
        )
        app.extensions["dq"] = services
        # Closed with the app: when it is garbage-collected, or at interpreter exit (gunicorn's
        # worker exit). Not per request (flaskr's teardown_appcontext): these clients are pooled.
        weakref.finalize(app, services.close)
        return services

    def close(self) -> None:
        """Close the long-lived clients (Redis pool, S3 connections)."""
        self.redis.close()
        self.storage.close()


def services() -> Services:
    found: Services = current_app.extensions["dq"]
    return found
