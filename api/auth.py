"""Who is calling: every ``/v1`` request carries ``Authorization: Bearer <key>``.

``authenticate`` runs before every request; under ``/v1`` it resolves the key (a cached
lookup, ≤ 1 s old, so a revoked key is refused by every process within a second) into a
``Caller``: the tenant, the key's prefix, whether it is an admin, its limits. Routes read it
with ``caller()`` and pass ``caller().scope`` to the store, which checks the tenant where the
job is read. ``admin_only`` guards admin routes (``403`` for other keys); ``signed_or_keyed``
routes (a prediction's output) also answer a URL signed with ``sig``, without a key.

``DQ_AUTH=off``: no key is asked; every caller is the admin of tenant ``default``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from api.services import services
from jobs.errors import Forbidden, Unauthorized
from jobs.settings import Settings
from jobs.store import ANY_TENANT, Limits, Owner
from jobs.tenants import DEFAULT_TENANT, ApiKey

log = logging.getLogger("dq.api")
ADMIN_ATTR = "__dq_admin_only__"
SIGNED_ATTR = "__dq_signed_or_keyed__"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Caller:
    tenant: str
    key: str  # the key's prefix ('' with auth off)
    admin: bool
    limits: Limits

    @property
    def owner(self) -> Owner:
        """Whom the jobs this caller creates belong to."""
        return Owner(self.tenant, self.key)

    @property
    def scope(self) -> str:
        """Whose jobs this caller reads and changes: its tenant's, or everyone's for an admin."""
        return ANY_TENANT if self.admin else self.tenant


def caller_for(record: ApiKey, settings: Settings) -> Caller:
    """A key's caller; limits the key leaves unset come from the configuration."""
    rate = settings.rate_limit_per_s if record.rate_limit_per_s is None else record.rate_limit_per_s
    burst = settings.rate_limit_burst if record.rate_limit_burst is None else record.rate_limit_burst
    active = settings.max_active_jobs if record.max_active_jobs is None else record.max_active_jobs
    limits = Limits(rate_per_s=rate, burst=max(burst, 1), max_active=active, max_priority=record.max_priority)
    return Caller(record.tenant, record.prefix, record.admin, limits)


def init_app(app: Flask, settings: Settings) -> None:
    if not settings.auth:
        log.warning(
            "AUTHENTICATION IS OFF (DQ_AUTH=off): every caller is the admin of tenant %r and sees every job. "
            "Use this only on a trusted network.",
            DEFAULT_TENANT,
        )
    app.before_request(authenticate)


def needs_key(path: str) -> bool:
    """Whether a request to ``path`` must carry a key (with ``DQ_AUTH`` on): everything under
    ``/v1``, and ``/metrics`` (an admin key: Prometheus sends it as a bearer token)."""
    return path.startswith("/v1/") or path in ("/v1", "/metrics")


def authenticate() -> None:
    """Resolve the caller of a ``/v1`` request (``401`` for a missing or bad key)."""
    if not needs_key(request.path):
        return
    svc = services()
    if not svc.settings.auth:
        g.caller = Caller(DEFAULT_TENANT, "", True, _default_limits(svc.settings))
        return
    if _signed_instead(request.endpoint) and request.args.get("sig") and "Authorization" not in request.headers:
        g.caller = None  # a signed URL: the view checks the signature instead of a key
        return
    scheme, _, presented = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized(
            "send your API key as `Authorization: Bearer <key>`", headers={"WWW-Authenticate": 'Bearer realm="dq"'}
        )
    record = svc.key_cache.lookup(presented.strip(), time.time())
    if record is None:
        raise Unauthorized(
            "the API key is not valid (unknown, revoked or malformed)",
            headers={"WWW-Authenticate": 'Bearer realm="dq", error="invalid_token"'},
        )
    g.caller = caller_for(record, svc.settings)


def _default_limits(settings: Settings) -> Limits:
    return Limits(settings.rate_limit_per_s, max(settings.rate_limit_burst, 1), settings.max_active_jobs)


def caller() -> Caller:
    found: Caller = g.caller
    return found


def admin_only(view: F) -> F:
    """A route for admin keys; another key gets ``403`` (and the OpenAPI document says so)."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not caller().admin:
            raise Forbidden("this route needs an admin key")
        return view(*args, **kwargs)

    setattr(guarded, ADMIN_ATTR, True)
    return guarded  # type: ignore[return-value]


def signed_or_keyed(view: F) -> F:
    """A route that also answers a request without a key when its URL carries ``sig`` (the view
    checks it, and reads ``caller_or_none()``: None for such a request)."""
    setattr(view, SIGNED_ATTR, True)
    return view


def _signed_instead(endpoint: str | None) -> bool:
    view = current_app.view_functions.get(endpoint or "")
    return bool(getattr(view, SIGNED_ATTR, False))


def caller_or_none() -> Caller | None:
    """The caller, or None for a signed request to a ``signed_or_keyed`` route."""
    found: Caller | None = g.caller
    return found


def is_admin_only(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, ADMIN_ATTR, False))


def list_scope(requested: str | None) -> str:
    """Whose jobs a list shows: the caller's tenant; for an admin, ``requested`` (``?tenant=``) or everyone's."""
    who = caller()
    if not who.admin:
        return who.tenant
    return requested or ANY_TENANT
