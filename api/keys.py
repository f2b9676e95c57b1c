"""``/v1/keys`` (admin): create, list, read and revoke API keys; ``/v1/tenants/<name>`` (admin):
a tenant's fair-share weight; ``/v1/webhook-secret``: the caller's tenant's webhook signing
secret, and its rotation."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.auth import admin_only, caller
from api.contract import Answer, contract
from api.inputs import json_body, parse_query
from api.jobs import TENANT_REGEX
from api.services import services
from jobs.errors import FieldError, KeyNotFound, ValidationFailed
from jobs.models import Integer, rfc3339
from jobs.submit import parse_body
from jobs.tenants import TENANT_PATTERN, WebhookSecret

bp = Blueprint("keys", __name__, url_prefix="/v1")
Priority = Literal["low", "normal", "high"]  # jobs.tenants.PRIORITIES


class KeyRequest(BaseModel):
    """Body of ``POST /v1/keys``; limits left out take the configured defaults."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"tenant": "acme", "label": "render farm", "max_active_jobs": 50}]},
    )

    tenant: str = Field(pattern=TENANT_REGEX)
    label: str = Field(default="", max_length=200)
    admin: bool = False
    rate_limit_per_s: float | None = Field(default=None, ge=0, le=1_000_000)
    rate_limit_burst: Integer | None = Field(default=None, ge=1, le=1_000_000)
    max_active_jobs: Integer | None = Field(default=None, ge=0, le=10_000_000)
    max_priority: Priority = "normal"


class KeyView(BaseModel):
    """A key's record (``jobs.tenants.ApiKey``), never its secret; unset limits are null."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(description="the key's public 8 hex digits (`dq_<prefix>_…`)")
    tenant: str
    label: str
    admin: bool
    created_at: float = Field(description="Unix seconds")
    last_used_at: float | None = Field(description="Unix seconds, written at most once a minute")
    rate_limit_per_s: float | None
    rate_limit_burst: int | None
    max_active_jobs: int | None
    max_priority: Priority


class NewKeyView(KeyView):
    key: str = Field(description="the key itself: shown this once, never stored")


class KeyPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: list[KeyView]


class KeyListQuery(BaseModel):
    tenant: str | None = Field(default=None, pattern=TENANT_REGEX, description="only this tenant's keys")


class WebhookSecretView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str
    secret: str = Field(description="`whsec_` + base64: deliveries are signed with it")
    previous_secret: str | None = Field(description="during a rotation window: deliveries carry both signatures")
    previous_valid_until: datetime | None


@bp.post("/keys")
@contract(
    "Create an API key",
    body=KeyRequest,
    responses={201: Answer(NewKeyView, "the key's record and, this once, the key", ("Location",))},
    errors=(ValidationFailed,),
)
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
@contract("List API keys", query=KeyListQuery, responses={200: KeyPage})
@admin_only
def list_keys() -> Response:
    """Every key's record (never a secret); ``?tenant=`` filters."""
    tenant = parse_query(KeyListQuery).tenant
    return jsonify({"data": [k.public() for k in services().api_keys.list(tenant)]})


@bp.get("/keys/<prefix>")
@contract("Read an API key", responses={200: KeyView}, errors=(KeyNotFound,))
@admin_only
def get_key(prefix: str) -> Response:
    """One key's record (never its secret)."""
    record = services().api_keys.get(prefix)
    if record is None:
        raise KeyNotFound(f"no API key with prefix {prefix!r}")
    return jsonify(record.public())


@bp.delete("/keys/<prefix>")
@contract("Revoke an API key", responses={204: None}, errors=(KeyNotFound,))
@admin_only
def revoke_key(prefix: str) -> Response:
    """``204``; every API process refuses the key within a second."""
    if not services().api_keys.revoke(prefix):
        raise KeyNotFound(f"no API key with prefix {prefix!r}")
    return Response(status=204)


class TenantSettings(BaseModel):
    """Body of ``PUT /v1/tenants/<name>``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    weight: float = Field(ge=0.01, le=100, description="its share of the workers against others in a band")


class TenantView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str
    weight: float


@bp.put("/tenants/<tenant>")
@contract("Set a tenant's fair-share weight", body=TenantSettings, responses={200: TenantView})
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
@contract("Read the webhook signing secret", responses={200: WebhookSecretView}, tag="webhooks")
def get_webhook_secret() -> Response:
    """The secret deliveries of the caller's tenant are signed with (and the previous one
    while a rotation window is open)."""
    return jsonify(_secret_view(services().tenants.webhook_secret(caller().tenant)))


@bp.post("/webhook-secret/rotate")
@contract("Rotate the webhook signing secret", responses={200: WebhookSecretView}, tag="webhooks")
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
