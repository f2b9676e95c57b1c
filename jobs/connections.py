"""Every Redis client of the project is made here (arq's ``create_pool``), one function per
purpose, so timeouts and retry behaviour are decided in one place.

- ``Role.API``: fails fast (no retries): a client told ``503`` retries with its Idempotency-Key.
- ``Role.WORKER``: rides out a Redis restart (~30 s of retries with backoff) instead of failing
  the job it is running; the reconciler and heartbeats share it.
- ``Role.PUBSUB``: a long-lived subscriber (cancel announcements); it reconnects itself.
- ``Role.DELIVERER``: the webhook deliverer; its loop retries on errors by itself.
"""

from __future__ import annotations

import enum
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.settings import Settings


class Role(str, enum.Enum):
    API = "api"
    WORKER = "worker"
    PUBSUB = "pubsub"
    DELIVERER = "deliverer"


def create_redis(settings: Settings, role: Role = Role.API) -> redis.Redis:
    """A client for ``settings.redis_url`` configured for ``role``."""
    options: dict[str, Any] = {"health_check_interval": 30}
    if role is Role.WORKER:
        options.update(
            socket_timeout=10,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 20),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
    elif role is Role.PUBSUB:
        options.update(socket_timeout=10, socket_connect_timeout=5)
    else:
        options.update(socket_timeout=5, socket_connect_timeout=2)
    # redis-py 8 caps a plain pool at 100 connections and raises beyond; under gevent an API
    # process has one request in flight per greenlet (a thousand event streams, a submit flood):
    # a blocking pool makes the rest wait for a connection instead of failing.
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_max_connections, timeout=5, **options
    )
    return redis.Redis(connection_pool=pool)


def as_text(value: Any) -> str:
    """A Redis reply (bytes, or a number from Lua) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)
