"""The OpenAPI 3.1 document, built from the routes' contracts and the pydantic models they name.

``build_document(app, settings)`` walks the app's URL map: every route has a ``@contract``
(``api/contract.py``) or is marked ``@undocumented``, else building fails. Schemas come from
pydantic (JSON Schema 2020-12, which OpenAPI 3.1 uses as is): request models in validation
mode, response models in serialization mode. The problems a route can answer are its
contract's domain errors plus those every route of its kind shares (key, admin, body, query,
Redis). ``document(app)`` builds it once per app.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.auth import is_admin_only, needs_key
from api.contract import Answer, Contract, contract_of, is_undocumented
from api.errors import PROBLEM_MEDIA_TYPE, Problem
from jobs.errors import Forbidden, MalformedJSON, Unauthorized, UnsupportedMediaType, ValidationFailed
from jobs.replicate import Prediction
from jobs.settings import Settings
from jobs.view import JobEvent

Mode = Literal["validation", "serialization"]
REF_TEMPLATE = "#/components/schemas/{model}"
CACHE_KEY = "dq.openapi"
IGNORED_METHODS = {"HEAD", "OPTIONS"}
CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer", "minimum": 0},
    "float": {"type": "number", "minimum": 0},
    "jobid": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}

# Response headers a contract may name; a problem's status brings its own (PROBLEM_HEADERS).
HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "where the resource is read", "schema": {"type": "string"}},
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "RateLimit-Policy": {
        "description": 'the key\'s quota (IETF draft): `"default";q=<burst>;w=<refill s>` for the rate, '
        '`"active";q=<max_active_jobs>` for active jobs',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'what is left: `"default";r=<tokens left>;t=<s until full>`, or `"active";r=0`',
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {"description": 'always `Bearer realm="dq"` (RFC 6750)', "schema": {"type": "string"}},
    "Preference-Applied": {
        "description": "`wait=N`: the wait the answer honoured (RFC 7240)",
        "schema": {"type": "string"},
    },
}
PROBLEM_HEADERS: dict[int, Answer] = {
    401: Answer(Problem, "", headers=("WWW-Authenticate",)),
    429: Answer(Problem, "", headers=("Retry-After",), optional_headers=("RateLimit-Policy", "RateLimit")),
    503: Answer(Problem, "", headers=("Retry-After",)),
}
WEBHOOK_HEADERS = {
    "webhook-id": "`msg_<job id>_<n>`: the same on every attempt of one message; deduplicate on it",
    "webhook-timestamp": "Unix seconds of this attempt",
    "webhook-signature": '`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with the '
    "tenant's secret (`GET /v1/webhook-secret`); two during a rotation, space-separated",
}
PREDICTION_WEBHOOK = "prediction"
WEBHOOK_BODIES: dict[str, type[BaseModel]] = {PREDICTION_WEBHOOK: Prediction}  # the others: JobEvent
WEBHOOK_EVENTS = {  # event: (summary, description)
    "job.started": ("A worker started the job", "`data.status` is `running`."),
    "job.progress": ("A denoising step", "At most one per 0.5 s; only when `webhook_events_filter` names `progress`."),
    "job.succeeded": ("The images are stored", "`data.outputs` has their presigned URLs."),
    "job.failed": ("The job failed", "`data.error` says why (`generation_error`, `timeout`, `expired`, …)."),
    "job.canceled": ("The job was canceled", "While queued, or stopped at a step while running."),
    PREDICTION_WEBHOOK: (
        "A prediction changed",
        "Every webhook of a job created through the Replicate-compatible routes carries the `Prediction` as it "
        "was at the event (`start`, `logs`, `output`, `completed` per its `webhook_events_filter`; "
        "docs/replicate.md).",
    ),
}
TAGS = [  # the order the docs page shows them in
    {"name": "jobs", "description": "Submit, read, wait for, stream, list, cancel and retry jobs"},
    {"name": "webhooks", "description": "Delivery attempts, redelivery, the signing secret"},
    {"name": "models", "description": "What each model can run, and the workers serving it"},
    {"name": "replicate", "description": "Replicate-compatible predictions and models (docs/replicate.md)"},
    {"name": "keys", "description": "API keys (admin keys only)"},
    {"name": "health", "description": "Liveness and readiness (no key)"},
    {"name": "meta", "description": "This document and its docs page (no key)"},
]
DESCRIPTION = """Asynchronous text-to-image jobs: submit (`202` + job id), poll or receive webhooks.

Every `/v1` route needs `Authorization: Bearer <key>`. Every error is `application/problem+json`.
The reference in prose: docs/api.md; webhooks: docs/webhooks.md."""


class MissingContract(RuntimeError):
    """A route has neither ``@contract`` nor ``@undocumented``."""


@dataclass(frozen=True)
class Operation:
    path: str  # in OpenAPI form: /v1/jobs/{job_id}
    method: str  # lower case
    path_params: tuple[tuple[str, dict[str, Any]], ...]  # (name, schema)
    contract: Contract
    admin: bool
    tag: str
    operation_id: str


def document(app: Flask) -> dict[str, Any]:
    """The app's document, built on first use."""
    cached: dict[str, Any] | None = app.extensions.get(CACHE_KEY)
    if cached is None:
        cached = build_document(app, app.extensions["dq"].settings)
        app.extensions[CACHE_KEY] = cached
    return cached


def build_document(app: Flask, settings: Settings) -> dict[str, Any]:
    ops = operations(app)
    schemas = Schemas(ops)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "diffusion-queue", "version": _version(), "description": DESCRIPTION},
        "tags": _tags(ops),
        "paths": {},
        "webhooks": {event: {"post": webhook_operation(event, schemas)} for event in WEBHOOK_EVENTS},
        "components": {"schemas": schemas.components},
    }
    for op in ops:
        doc["paths"].setdefault(op.path, {})[op.method] = operation_object(op, schemas, settings)
    schemas.drop_parameter_models()
    if settings.auth:
        doc["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an API key, `dq_<prefix>_<secret>`"}
        }
        doc["security"] = [{"bearerAuth": []}]
    return doc


def operations(app: Flask) -> list[Operation]:
    """Every documented (rule, method), in path order; ``MissingContract`` for a route without one."""
    found: list[Operation] = []
    ids: set[str] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        if rule.endpoint == "static" or is_undocumented(view):
            continue
        declared = contract_of(view)
        if declared is None:
            raise MissingContract(f"route {rule.rule} ({rule.endpoint}) has no @contract; see api/contract.py")
        methods = sorted((rule.methods or set()) - IGNORED_METHODS)
        for method in methods:
            op_id = (declared.operation_id or view.__name__) + (f"_{method.lower()}" if len(methods) > 1 else "")
            if op_id in ids:
                raise MissingContract(f"operation id {op_id!r} is used twice; set operation_id= on one")
            ids.add(op_id)
            path, params = _openapi_path(rule.rule, app.url_map.converters)
            blueprint = rule.endpoint.rpartition(".")[0] or "meta"
            found.append(
                Operation(path, method.lower(), params, declared, is_admin_only(view), declared.tag or blueprint, op_id)
            )
    return found


class Schemas:
    """The components every operation refers to, generated by pydantic in one go."""

    def __init__(self, ops: list[Operation]) -> None:
        pairs = sorted(set(_models(ops)), key=lambda pair: (pair[0].__name__, pair[1]))
        refs, defs = models_json_schema(pairs, ref_template=REF_TEMPLATE)
        self._refs = {key: value["$ref"] for key, value in refs.items()}
        self.components: dict[str, Any] = defs.get("$defs", {})
        self._params = {model for op in ops for model in (op.contract.query, op.contract.headers) if model}

    def drop_parameter_models(self) -> None:
        """Query and header models become parameters, not schemas: leave them out of components."""
        for model in self._params:
            self.components.pop(self._refs[(model, "validation")].rpartition("/")[2], None)

    def ref(self, model: type[BaseModel], mode: Mode) -> dict[str, str]:
        return {"$ref": self._refs[(model, mode)]}

    def parameters(self, model: type[BaseModel], where: str) -> list[dict[str, Any]]:
        """One parameter per field of ``model`` (named by alias), its schema from the model's."""
        schema = self.components[self._refs[(model, "validation")].rpartition("/")[2]]
        required = set(schema.get("required", ()))
        params = []
        for name, prop in schema.get("properties", {}).items():
            prop = _without_null(prop)
            param = {"name": name, "in": where, "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop.pop("description")
            params.append(param)
        return params


def operation_object(op: Operation, schemas: Schemas, settings: Settings) -> dict[str, Any]:
    c = op.contract
    obj: dict[str, Any] = {"tags": [op.tag], "summary": c.summary, "operationId": op.operation_id}
    description = ("Admin keys only. " if op.admin and settings.auth else "") + c.description
    if description:
        obj["description"] = description
    params = [{"name": name, "in": "path", "required": True, "schema": schema} for name, schema in op.path_params]
    if c.query:
        params += schemas.parameters(c.query, "query")
    if c.headers:
        params += schemas.parameters(c.headers, "header")
    if params:
        obj["parameters"] = params
    if c.body:
        obj["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.ref(c.body, "validation")}},
        }
    responses = {str(status): response_object(answer, schemas) for status, answer in sorted(c.responses.items())}
    for status, titles in sorted(problems(op, settings).items()):
        responses.setdefault(str(status), problem_response(status, titles, schemas))
    obj["responses"] = responses
    if not (settings.auth and needs_key(op.path)):
        obj["security"] = []
    return obj


def problems(op: Operation, settings: Settings) -> dict[int, list[str]]:
    """Status → the titles of the problems ``op`` can answer with it."""
    found: dict[int, list[str]] = {}

    def add(status: int, title: str) -> None:
        titles = found.setdefault(status, [])
        if title not in titles:
            titles.append(title)

    c = op.contract
    for error in c.errors:
        add(error.status, error.title)
    if c.body:
        add(MalformedJSON.status, MalformedJSON.title)
        add(413, "Request body too large (over DQ_MAX_BODY_BYTES)")
        add(UnsupportedMediaType.status, UnsupportedMediaType.title)
    if c.body or c.query or c.headers:
        add(ValidationFailed.status, ValidationFailed.title)
    if needs_key(op.path):
        if settings.auth:
            add(Unauthorized.status, Unauthorized.title)
            if op.admin:
                add(Forbidden.status, Forbidden.title)
        add(503, "Service unavailable (the job store is unreachable)")
    return found


def response_object(answer: Answer, schemas: Schemas) -> dict[str, Any]:
    obj: dict[str, Any] = {"description": answer.description}
    if answer.body is not None:
        obj["content"] = {answer.media_type: {"schema": schemas.ref(answer.body, "serialization")}}
    headers = {name: {**HEADERS[name], "required": True} for name in answer.headers}
    headers.update({name: HEADERS[name] for name in answer.optional_headers})
    if headers:
        obj["headers"] = headers
    return obj


def problem_response(status: int, titles: list[str], schemas: Schemas) -> dict[str, Any]:
    base = PROBLEM_HEADERS.get(status, Answer(Problem, ""))
    answer = Answer(Problem, "; ".join(titles), base.headers, base.optional_headers, PROBLEM_MEDIA_TYPE)
    return response_object(answer, schemas)


def webhook_operation(event: str, schemas: Schemas) -> dict[str, Any]:
    """What ``dq webhooks`` POSTs to a job's ``webhook`` URL for ``event``."""
    summary, description = WEBHOOK_EVENTS[event]
    body = WEBHOOK_BODIES.get(event, JobEvent)
    return {
        "summary": summary,
        "description": f"`{event}`: {description} Signed per Standard Webhooks; see docs/webhooks.md.",
        "operationId": "webhook_" + event.replace(".", "_"),
        "parameters": [
            {"name": name, "in": "header", "required": True, "description": text, "schema": {"type": "string"}}
            for name, text in WEBHOOK_HEADERS.items()
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schemas.ref(body, "serialization")}},
        },
        "responses": {
            "2XX": {"description": "delivered"},
            "410": {"description": "gone: this message is not sent again"},
            "default": {"description": "408, 429 and 5xx are retried on the schedule; other answers fail the message"},
        },
    }


def _tags(ops: list[Operation]) -> list[dict[str, str]]:
    """``TAGS`` in their order, then any other tag a route uses."""
    tags = list(TAGS)
    for op in ops:
        if all(t["name"] != op.tag for t in tags):
            tags.append({"name": op.tag})
    return tags


def _models(ops: list[Operation]) -> Iterator[tuple[type[BaseModel], Mode]]:
    yield Problem, "serialization"
    yield JobEvent, "serialization"
    yield from ((body, "serialization") for body in WEBHOOK_BODIES.values())
    for op in ops:
        c = op.contract
        for model in (c.body, c.query, c.headers):
            if model is not None:
                yield model, "validation"
        for answer in c.responses.values():
            if answer.body is not None:
                yield answer.body, "serialization"


def _openapi_path(rule: str, converters: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, dict[str, Any]], ...]]:
    """``/v1/jobs/<job_id>`` → ``/v1/jobs/{job_id}``, and each parameter's schema from its converter
    (one of the app's own that is not in ``CONVERTER_SCHEMAS``: a string matching its regex)."""
    path, params = rule, []
    while "<" in path:
        start, end = path.index("<"), path.index(">")
        converter, _, name = path[start + 1 : end].rpartition(":")
        kind = converter.partition("(")[0]
        schema = CONVERTER_SCHEMAS.get(kind) or _converter_schema(converters.get(kind))
        params.append((name, dict(schema)))
        path = path[:start] + "{" + name + "}" + path[end + 1 :]
    return path, tuple(params)


def _converter_schema(converter: Any) -> dict[str, Any]:
    regex = getattr(converter, "regex", None)
    if converter is None or regex in (None, "[^/]+"):  # the default: any path segment
        return {"type": "string"}
    return {"type": "string", "pattern": f"^{regex}$"}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the ``null`` an optional field allows (absent is how it is left out)."""
    schema = {k: v for k, v in schema.items() if k != "title" and not (k == "default" and v is None)}
    options = [s for s in schema.pop("anyOf", []) if s != {"type": "null"}]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    return schema


def _version() -> str:
    try:
        return metadata.version("diffusion-queue")
    except metadata.PackageNotFoundError:
        return "0+unknown"
