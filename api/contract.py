"""Each route's HTTP contract, declared on the route itself with ``@contract(...)``.

A contract says what a route takes (a JSON body, query parameters, request headers: each a
pydantic model the route also validates with, see ``api/inputs.py``), what it answers (status →
body model and response headers) and which domain errors it raises. It is data attached to the
view function and changes nothing about how the route runs; ``api/openapi.py`` walks the app's
URL map and builds the OpenAPI document from these. A route without a contract (or an explicit
``@undocumented``) makes the document fail to build, so none can be forgotten.

Adding a route::

    @bp.post("/<job_id>/retry")
    @contract(
        "Retry a failed job",
        responses={202: Answer(JobView, "queued again", headers=("Location",))},
        errors=(JobNotFound, InvalidTransition),
    )
    def retry_job(job_id: str) -> Response: ...

Problems every route of a kind can answer are added by the builder: ``401`` for routes that
need a key, ``403`` for ``@admin_only`` ones, ``400``/``413``/``415``/``422`` for a JSON body,
``422`` for query or header parameters, ``503`` (Redis unreachable) for every ``/v1`` route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from jobs.errors import DQError

F = TypeVar("F", bound=Callable[..., Any])
CONTRACT_ATTR = "__dq_contract__"
UNDOCUMENTED_ATTR = "__dq_undocumented__"


@dataclass(frozen=True)
class Answer:
    """One documented response: its body model (None: no body), what it means, its headers.

    ``headers`` are always sent; ``optional_headers`` sometimes (names from ``HEADERS`` in
    ``api/openapi.py``). ``media_type`` is the body's content type.
    """

    body: type[BaseModel] | None
    description: str
    headers: tuple[str, ...] = ()
    optional_headers: tuple[str, ...] = ()
    media_type: str = "application/json"


@dataclass(frozen=True)
class Contract:
    summary: str
    description: str
    responses: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    errors: tuple[type[DQError], ...] = ()
    tag: str | None = None  # default: the blueprint's name
    operation_id: str | None = None  # default: the view function's name


def contract(
    summary: str,
    *,
    responses: Mapping[int, Answer | type[BaseModel] | None],
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    errors: tuple[type[DQError], ...] = (),
    tag: str | None = None,
    operation_id: str | None = None,
    description: str | None = None,
) -> Callable[[F], F]:
    """Attach a ``Contract`` to a view. ``responses`` values may be a bare model (``200: JobPage``)
    or None (no body, e.g. ``204``); the view's docstring is the operation's description."""

    def attach(view: F) -> F:
        answers = {status: _answer(status, spec) for status, spec in responses.items()}
        setattr(
            view,
            CONTRACT_ATTR,
            Contract(
                summary=summary,
                description=description if description is not None else _docstring(view),
                responses=answers,
                body=body,
                query=query,
                headers=headers,
                errors=errors,
                tag=tag,
                operation_id=operation_id,
            ),
        )
        return view

    return attach


def undocumented(view: F) -> F:
    """A route deliberately left out of the document (the docs page's static assets)."""
    setattr(view, UNDOCUMENTED_ATTR, True)
    return view


def contract_of(view: Callable[..., Any]) -> Contract | None:
    found: Contract | None = getattr(view, CONTRACT_ATTR, None)
    return found


def is_undocumented(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, UNDOCUMENTED_ATTR, False))


def _answer(status: int, spec: Answer | type[BaseModel] | None) -> Answer:
    if isinstance(spec, Answer):
        return spec
    return Answer(spec, DEFAULT_DESCRIPTIONS.get(status, "success"))


def _docstring(view: Callable[..., Any]) -> str:
    lines = (view.__doc__ or "").strip().splitlines()
    return " ".join(line.strip() for line in lines)


DEFAULT_DESCRIPTIONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}
