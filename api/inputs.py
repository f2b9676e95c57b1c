"""Reading a request: its JSON body, its query string and its headers.

Each part is validated by a pydantic model: the same model the route's contract names
(``api/contract.py``), so the OpenAPI document describes exactly what is checked. A bad part
is a ``ValidationFailed`` naming the parameter; a body that is not JSON is ``415`` or ``400``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel

from jobs.errors import FieldError, MalformedJSON, UnsupportedMediaType
from jobs.submit import parse_body

Params = TypeVar("Params", bound=BaseModel)
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \ud800-\udfff: paired, or a lone one


def json_body() -> Any:
    """The body parsed as JSON: ``415`` unless it is sent as JSON (or without a type), ``400`` if malformed."""
    content_type = request.mimetype
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"unsupported content type {content_type!r}; send the body as application/json",
            [FieldError("Content-Type", "must be application/json")],
        )
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw, parse_constant=_not_json)
        if SURROGATE_ESCAPE.search(raw):  # rare: only then pay for a second pass
            json.dumps(body, ensure_ascii=False).encode()
        return body
    except (ValueError, UnicodeError) as exc:
        raise MalformedJSON(f"the body is not valid JSON: {exc}", [FieldError("body", "malformed JSON")]) from exc
    except RecursionError:
        raise MalformedJSON("the body is nested too deeply", [FieldError("body", "nested too deeply")]) from None


def _not_json(constant: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity``, which Python's parser accepts and JSON does not."""
    raise ValueError(f"{constant} is not a JSON value")


def parse_query(model: type[Params]) -> Params:
    """The query string validated by ``model`` (a parameter given twice: its first value)."""
    return _parse_params(model, request.args.get)


def parse_headers(model: type[Params]) -> Params:
    """The request headers ``model`` names (by alias, e.g. ``Idempotency-Key``), validated."""
    return _parse_params(model, request.headers.get)


def _parse_params(model: type[Params], get: Callable[[str], str | None]) -> Params:
    values: dict[str, str] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        value = get(key)
        if value is not None:
            values[key] = value
    return parse_body(model, values)
