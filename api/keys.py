"""``/v1/keys`` (admin): create, list and revoke API keys; ``/v1/tenants/<name>`` (admin): a
tenant's fair-share weight; ``/v1/webhook-secret``: the caller's tenant's webhook signing
secret, and its rotation."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import admin_only, caller
from api.jobs import json_body
from api.services import services
from jobs.errors import FieldError, KeyNotFound, ValidationFailed
from jobs.models import rfc3339
from jobs.submit import parse_body
from jobs.tenants import PRIORITIES, TENANT_PATTERN, WebhookSecret

bp = Blueprint("keys", __name__, url_prefix="/v1")


class KeyRequest(BaseModel):
    """Body of ``POST /v1/keys``; limits left out take the configured defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    label: str = Field(default="", max_length=200)
    admin: bool = False
    rate_limit_per_s: float | None = Field(default=None, ge=0, le=1_000_000)
    rate_limit_burst: int | None = Field(default=None, ge=1, le=1_000_000)
    max_active_jobs: int | None = Field(default=None, ge=0, le=10_000_000)
    max_priority: str = Field(default="normal", pattern="^(" + "|".join(PRIORITIES) + ")$")


@bp.post("/keys")
@admin_only
def create_key() -> Response:
    """A new key: ``201`` with its record and, this once, the key itself (``"key"``)."""
    spec = parse_body(KeyRequest, json_body())
    record, key = services().api_keys.create(**spec.model_dump())
    response = jsonify({**record.public(), "key": key})
    response.status_code = 201
    response.headers["Location"] = f"/v1/keys/{record.prefix}"
    return response


@bp.get("/keys")
@admin_only
def list_keys() -> Response:
    """Every key's record (never a secret); ``?tenant=`` filters."""
    tenant = request.args.get("tenant") or None
    return jsonify({"data": [k.public() for k in services().api_keys.list(tenant)]})


@bp.delete("/keys/<prefix>")
@admin_only
def revoke_key(prefix: str) -> Response:
    """``204``; every API process refuses the key within a second."""
    if not services().api_keys.revoke(prefix):
        raise KeyNotFound(f"no API key with prefix {prefix!r}")
    return Response(status=204)


class TenantSettings(BaseModel):
    """Body of ``PUT /v1/tenants/<name>``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    weight: float = Field(ge=0.01, le=100)  # its share of the workers against others in the same band


@bp.put("/tenants/<tenant>")
@admin_only
def set_tenant(tenant: str) -> Response:
    """A tenant's fair-share weight (default 1): with weight 2 it gets twice the job slots of a
    weight-1 tenant while both have jobs waiting in the same priority band."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValidationFailed("invalid tenant", [FieldError("tenant", "1-64 of a-z, 0-9, '.', '_', '-'")])
    spec = parse_body(TenantSettings, json_body())
    services().store.set_weight(tenant, spec.weight)
    return jsonify({"tenant": tenant, "weight": spec.weight})


@bp.get("/webhook-secret")
def get_webhook_secret() -> Response:
    """The secret deliveries of the caller's tenant are signed with (and the previous one
    while a rotation window is open)."""
    return jsonify(_secret_view(services().tenants.webhook_secret(caller().tenant)))


@bp.post("/webhook-secret/rotate")
def rotate_webhook_secret() -> Response:
    """A new secret; for ``DQ_WEBHOOK_ROTATION_S`` (24 h) every delivery carries both signatures."""
    svc = services()
    rotated = svc.tenants.rotate(caller().tenant, svc.settings.webhook_rotation_s)
    return jsonify(_secret_view(rotated))


def _secret_view(secret: WebhookSecret) -> dict[str, Any]:
    open_window = secret.previous_until is not None and secret.previous_until > time.time()
    return {
        "tenant": caller().tenant,
        "secret": secret.secret,
        "previous_secret": secret.previous if open_window else None,
        "previous_valid_until": rfc3339(secret.previous_until) if open_window else None,
    }
