"""``GET /openapi.json`` (the document, ``api/openapi.py``) and ``GET /docs``: Swagger UI, whose
files come from the ``openapi-ui-bundles`` package and are served from here. Nothing is loaded
from the internet. Both are open (no key): the page's Authorize button takes one for "Try it out".
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory
from openapi_ui_bundles import swagger_ui
from pydantic import RootModel

from api.contract import Answer, contract, undocumented
from api.openapi import document

bp = Blueprint("docs", __name__)
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})
ASSET_MAX_AGE_S = 3600
# Relative URLs: the page works behind a proxy that mounts the API under a prefix.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>diffusion-queue API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="docs/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      validatorUrl: null
    });
  </script>
</body>
</html>
"""


class OpenAPIDocument(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document."""


class HtmlPage(RootModel[str]):
    """An HTML page."""


@bp.get("/openapi.json")
@contract("This OpenAPI document", responses={200: OpenAPIDocument}, tag="meta")
def openapi_json() -> Response:
    """Built from the routes' contracts and the pydantic models the API validates with."""
    return jsonify(document(current_app))


@bp.get("/docs")
@contract(
    "API reference (Swagger UI)", responses={200: Answer(HtmlPage, "the page", media_type="text/html")}, tag="meta"
)
def docs_page() -> Response:
    """Swagger UI for this document; Authorize takes an API key for "Try it out"."""
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/<name>")
@undocumented
def docs_asset(name: str) -> Response:
    if name not in ASSETS:
        abort(404)
    return send_from_directory(swagger_ui.static_path, name, max_age=ASSET_MAX_AGE_S)
