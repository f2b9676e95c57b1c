"""The OpenAPI document (``GET /openapi.json``) and the docs page (``GET /docs``): every route is
in the document with its problems and headers, the document is valid OpenAPI 3.1, the response
models match what the code renders, and the page loads everything from this server."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any, get_args
from urllib.parse import urljoin

import pytest
import schemathesis
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from api import create_app
from api.contract import Answer, contract
from api.keys import KeyView, Priority
from api.models import ModelView, WorkerState, WorkerView
from api.openapi import MissingContract, build_document
from jobs.models import WEBHOOK_EVENTS, JobStatus
from jobs.settings import Settings
from jobs.store import JobRecord
from jobs.tenants import PRIORITIES, ApiKey
from jobs.view import EVENT_TYPES, EventType, JobEvent, JobView, WebhookEvent, render_job
from jobs.workers import WORKER_STATES, WorkerInfo
from webhooks.deliver import render_body

DOCUMENTED_PREFIXES = ("/v1/", "/healthz", "/readyz")
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/")


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@pytest.fixture
def doc(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")  # no key: the document is open
    assert response.status_code == 200 and response.mimetype == "application/json"
    found: dict[str, Any] = response.get_json()
    return found


def test_every_route_is_in_the_document(app: Flask, doc: dict[str, Any]) -> None:
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith(DOCUMENTED_PREFIXES)]
    assert len(rules) >= 13
    for rule in rules:
        operations = doc["paths"].get(openapi_path(rule.rule))
        assert operations is not None, f"{rule.rule} is not in the document"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in operations, f"{method} {rule.rule} is not in the document"


def test_a_route_without_a_contract_fails_the_build(s3_settings: Settings) -> None:
    app = create_app(s3_settings)
    forgotten = Blueprint("forgotten", __name__)
    forgotten.add_url_rule("/v1/forgotten", view_func=lambda: "", endpoint="forgotten")
    app.register_blueprint(forgotten)
    with pytest.raises(MissingContract, match="/v1/forgotten"):
        build_document(app, s3_settings)


def test_a_new_route_takes_a_few_lines(s3_settings: Settings) -> None:
    app = create_app(s3_settings)
    extra = Blueprint("extra", __name__, url_prefix="/v1/jobs")

    @extra.post("/<job_id>/rerun/<int:attempt>")
    @contract("Rerun a job", responses={202: Answer(JobView, "queued again", ("Location",))})
    def rerun_job(job_id: str, attempt: int) -> str:
        return job_id

    app.register_blueprint(extra)
    op = build_document(app, s3_settings)["paths"]["/v1/jobs/{job_id}/rerun/{attempt}"]["post"]
    assert op["parameters"] == [
        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "attempt", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
    ]
    assert op["responses"]["202"]["headers"]["Location"]["required"] is True
    assert {"401", "503"} <= op["responses"].keys()
    assert op["tags"] == ["extra"]


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()  # against the OpenAPI 3.1 meta-schema


def test_security_bearer_except_open_routes(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key, `dq_<prefix>_<secret>`",
    }
    assert doc["security"] == [{"bearerAuth": []}]
    for path, operations in doc["paths"].items():
        for op in operations.values():
            if path in OPEN_PATHS:
                assert op["security"] == [] and "401" not in op["responses"], path
            else:
                assert "security" not in op, path
                unauthorized = op["responses"]["401"]
                assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
                assert unauthorized["content"]["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
                assert "503" in op["responses"], path


def test_problems_and_headers_of_submit(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/jobs"]["post"]
    assert set(op["responses"]) == {"200", "202", "400", "401", "413", "415", "422", "429", "503"}
    assert op["responses"]["202"]["headers"]["Location"]["required"] is True
    assert {"RateLimit-Policy", "RateLimit"} <= op["responses"]["202"]["headers"].keys()
    too_many = op["responses"]["429"]["headers"]
    assert too_many["Retry-After"]["required"] is True and {"RateLimit-Policy", "RateLimit"} <= too_many.keys()
    assert op["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobRequest"}
    assert [p["name"] for p in op["parameters"]] == ["Idempotency-Key", "Prefer"]
    request = doc["components"]["schemas"]["JobRequest"]
    assert request["additionalProperties"] is False and request["required"] == ["prompt"]


def test_admin_routes_answer_403_and_others_do_not(doc: dict[str, Any]) -> None:
    admin = {("/v1/keys", "post"), ("/v1/keys", "get"), ("/v1/keys/{prefix}", "get")}
    admin |= {("/v1/keys/{prefix}", "delete"), ("/v1/workers", "get"), ("/v1/tenants/{tenant}", "put")}
    admin |= {("/v1/models/{name}/pause", "post"), ("/v1/models/{name}/resume", "post"), ("/metrics", "get")}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert ("403" in op["responses"]) == ((path, method) in admin), (path, method)


def test_query_parameters_come_from_the_validating_model(doc: dict[str, Any]) -> None:
    params = {p["name"]: p for p in doc["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert set(params) == {"status", "error_type", "limit", "cursor", "tenant"}
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert params["status"]["schema"] == {"$ref": "#/components/schemas/JobStatus"}
    assert doc["components"]["schemas"]["JobStatus"]["enum"] == [s.value for s in JobStatus]
    assert "JobListQuery" not in doc["components"]["schemas"]
    assert "422" in doc["paths"]["/v1/jobs"]["get"]["responses"]


def test_webhooks_section(doc: dict[str, Any]) -> None:
    assert list(doc["webhooks"]) == [*EVENT_TYPES, "prediction"]  # a prediction's webhooks carry the prediction
    for name, item in doc["webhooks"].items():
        op = item["post"]
        assert {p["name"] for p in op["parameters"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}
        body = "Prediction" if name == "prediction" else "JobEvent"
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{body}"}
    event_schema = doc["components"]["schemas"]["JobEvent"]
    assert event_schema["required"] == ["type", "timestamp", "data"]
    assert event_schema["properties"]["data"] == {"$ref": "#/components/schemas/JobView"}


def test_literals_match_the_code() -> None:
    assert get_args(Priority) == PRIORITIES
    assert get_args(WorkerState) == WORKER_STATES
    assert get_args(WebhookEvent) == WEBHOOK_EVENTS
    assert get_args(EventType) == EVENT_TYPES


def test_record_views_list_every_field_of_their_dataclass() -> None:
    assert list(KeyView.model_fields) == [f.name for f in fields(ApiKey)]
    assert list(WorkerView.model_fields) == [f.name for f in fields(WorkerInfo)]
    KeyView.model_validate(ApiKey("0123abcd", "acme", created_at=1.0).public())
    WorkerView.model_validate(WorkerInfo("w", "h", 1, "tiny-sd", "emulated", "0-1", "ready").public())


def test_rendered_job_and_webhook_body_match_their_models() -> None:
    record = JobRecord(
        id="1f0c",
        status=JobStatus.SUCCEEDED,
        model="tiny-sd",
        input={
            "prompt": "p",
            "negative_prompt": None,
            "num_inference_steps": 2,
            "guidance_scale": 7.5,
            "seed": 42,
            "width": 64,
            "height": 64,
            "num_images": 1,
            "output_format": "webp",
            "ttl_seconds": 60,
            "timeout_seconds": 60,
            "scheduler": "euler",
        },
        seq=1,
        created_at=1_700_000_000.0,
        started_at=1_700_000_001.0,
        completed_at=1_700_000_002.0,
        outputs=[
            {
                "bucket": "b",
                "key": "outputs/tiny-sd/1f0c/0.webp",
                "content_type": "image/webp",
                "width": 64,
                "height": 64,
                "seed": 42,
                "bytes": 100,
                "sha256": "ab",
                "format": "webp",
            }
        ],
        webhook_events_filter=["succeeded"],
    )
    JobView.model_validate(render_job(record, None, lambda bucket, key: f"http://s3/{bucket}/{key}"))
    event = {"type": "job.succeeded", "timestamp": "1700000002.5", "job": _as_hash(record)}
    JobEvent.model_validate_json(render_body(event, None))


def _as_hash(record: JobRecord) -> dict[str, str]:
    import json

    return {
        "id": record.id,
        "status": record.status.value,
        "model": record.model,
        "input": json.dumps(record.input),
        "created_at": repr(record.created_at),
        "outputs": json.dumps(record.outputs),
    }


def test_models_route_matches_its_model(client: FlaskClient) -> None:
    for item in client.get("/v1/models").get_json()["data"]:
        ModelView.model_validate(item)


def test_docs_page_and_its_assets_are_served_locally(app: Flask) -> None:
    anonymous = app.test_client()
    page = anonymous.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    refs = re.findall(r'(?:href|src|url)\s*[=:]\s*"([^"]+)"', html)
    assert {"docs/swagger-ui-bundle.js", "docs/swagger-ui.css", "openapi.json"} <= set(refs)
    assert "persistAuthorization: true" in html  # the Authorize button keeps the pasted key
    for ref in refs:
        assert not re.match(r"^(https?:)?//", ref), f"{ref} would load from another host"
        asset = anonymous.get(urljoin("/docs", ref))
        assert asset.status_code == 200, ref
        asset.close()
    assert anonymous.get("/docs/../api/__init__.py").status_code == 404
    assert anonymous.get("/docs/index.html").status_code == 404  # only the listed assets


def test_with_auth_off_the_document_asks_no_key(s3_settings: Settings) -> None:
    doc = build_document(create_app(s3_settings.with_(auth=False)), s3_settings.with_(auth=False))
    assert "security" not in doc and "securitySchemes" not in doc["components"]
    assert "401" not in doc["paths"]["/v1/jobs"]["post"]["responses"]


def test_every_tag_is_declared(doc: dict[str, Any]) -> None:
    declared = [t["name"] for t in doc["tags"]]
    used = {tag for operations in doc["paths"].values() for op in operations.values() for tag in op["tags"]}
    assert used <= set(declared) and len(declared) == len(set(declared))
