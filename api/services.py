"""The long-lived clients the API uses, created once per app and closed with it."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import redis
from flask import Flask, current_app

from jobs.capabilities import ModelCatalog
from jobs.connections import Role, create_redis
from jobs.eta import CapacityCache
from jobs.events import EventHub, EventLog
from jobs.keys import Keys
from jobs.settings import Settings
from jobs.storage import S3Storage
from jobs.store import Backpressure, JobStore
from jobs.tenants import KeyCache, KeyStore, Tenants
from jobs.workers import WorkerRegistry, heartbeat_ttl_s


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    workers: WorkerRegistry
    catalog: ModelCatalog
    storage: S3Storage
    api_keys: KeyStore
    key_cache: KeyCache
    tenants: Tenants
    events: EventLog
    hub: EventHub  # one pub/sub subscription per process, started by the first waiter
    capacity: CapacityCache  # each model's serving workers and call times, for ETAs (≤ 1 s old)

    @classmethod
    def init_app(cls, app: Flask, settings: Settings) -> Services:
        client = create_redis(settings, Role.API)
        keys = Keys(settings.key_prefix)
        api_keys = KeyStore(client, keys)
        services = cls(
            settings=settings,
            redis=client,
            store=JobStore(
                client,
                keys,
                retention_s=settings.job_retention_s,
                progress_event_interval_s=settings.progress_event_interval_s,
                backpressure=backpressure(settings),
            ),
            workers=WorkerRegistry(client, keys),
            catalog=ModelCatalog(settings.models_dir),
            storage=S3Storage(settings),
            api_keys=api_keys,
            key_cache=KeyCache(api_keys),
            tenants=Tenants(client, keys, default_secret=settings.webhook_secret),
            events=EventLog(client, keys),
            hub=EventHub(create_redis(settings, Role.PUBSUB), keys),
            capacity=CapacityCache(client, keys),
        )
        app.extensions["dq"] = services
        # Closed with the app: when it is garbage-collected, or at interpreter exit (gunicorn's
        # worker exit). Not per request (flaskr's teardown_appcontext): these clients are pooled.
        weakref.finalize(app, services.close)
        return services

    def close(self) -> None:
        """Close the long-lived clients (Redis pool, S3 connections) and stop the event hub."""
        self.hub.stop()
        self.redis.close()
        self.storage.close()


def backpressure(settings: Settings) -> Backpressure:
    return Backpressure(
        max_backlog=settings.max_backlog,
        max_wait_s=settings.max_queue_wait_s,
        worker_stale_s=heartbeat_ttl_s(settings.heartbeat_s),
        no_worker_s=settings.no_worker_s,
    )


def services() -> Services:
    found: Services = current_app.extensions["dq"]
    return found
