"""Domain errors. The API maps each to an HTTP problem in exactly one place (api/errors.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class DQError(Exception):
    """Base of every error a client can be told about."""

    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(
        self, detail: str, errors: list[FieldError] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}  # sent with the problem (WWW-Authenticate, Retry-After, RateLimit)


class ValidationFailed(DQError):
    status = 422
    title = "Validation failed"
    slug = "validation"


class MalformedJSON(ValidationFailed):
    status = 400
    title = "Malformed JSON"
    slug = "malformed-json"


class UnsupportedMediaType(DQError):
    """A body sent as something other than JSON."""

    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class JobNotFound(DQError):
    status = 404
    title = "Job not found"
    slug = "not-found"


class ModelNotFound(DQError):
    status = 404
    title = "Model not found"
    slug = "not-found"


class VersionNotFound(DQError):
    status = 404
    title = "Model version not found"
    slug = "not-found"


class OutputNotFound(DQError):
    status = 404
    title = "Output not found"
    slug = "not-found"


class DeliveryNotFound(DQError):
    status = 404
    title = "Delivery not found"
    slug = "not-found"


class IdempotencyConflict(DQError):
    status = 422
    title = "Idempotency key reused with a different request"
    slug = "idempotency-conflict"


class TooManyItems(DQError):
    status = 413
    title = "Too many items"
    slug = "too-large"


class InvalidTransition(DQError):
    status = 409
    title = "Conflict with the job's state"
    slug = "conflict"


class Unauthorized(DQError):
    """No key, a malformed one, an unknown or a revoked one: the same answer for all."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(DQError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class KeyNotFound(DQError):
    status = 404
    title = "API key not found"
    slug = "not-found"


class TooManyRequests(DQError):
    """The key's rate or quota, or the model's backlog: try again after ``Retry-After``."""

    status = 429
    title = "Too many requests"
    slug = "rate-limited"


class Overloaded(TooManyRequests):
    title = "The model's queue is full"
    slug = "backpressure"


class NoWorker(DQError):
    status = 503
    title = "No worker for this model"
    slug = "no-worker"


class StorageUnavailable(DQError):
    status = 503
    title = "Object storage unavailable"
    slug = "unavailable"
