"""``GET /``: the web console, a page of plain HTML, CSS and JavaScript written here
(``api/static/console/``: no build step, nothing loaded from the internet).

The page and its files are open; everything the console shows it fetches from ``/v1`` with the
API key the person signs in with (kept in the tab's ``sessionStorage``, sent as
``Authorization: Bearer``). URLs are relative, so the console works behind a proxy that mounts
the API under a prefix. A Content-Security-Policy allows scripts, styles and fetches from this
server only; images from any http(s) origin (outputs are presigned S3 URLs).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, send_from_directory

from api.contract import Answer, contract, undocumented
from api.docs import HtmlPage

bp = Blueprint("console", __name__)
ASSET_DIR = Path(__file__).resolve().parent / "static" / "console"
ASSETS = frozenset({"app.js", "console.css", "favicon.svg"})
ASSET_MAX_AGE_S = 300
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: http: https:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
@contract("Web console", responses={200: Answer(HtmlPage, "the page", media_type="text/html")}, tag="meta")
def console_page() -> Response:
    """Sign in with an API key; submit jobs and follow them; browse recent images; workers and queues (admins)."""
    page = (ASSET_DIR / "index.html").read_text(encoding="utf-8")
    response = Response(page, mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return _secure(response)


@bp.get("/console/<name>")
@undocumented
def console_asset(name: str) -> Response:
    if name not in ASSETS:
        abort(404)
    return _secure(send_from_directory(ASSET_DIR, name, max_age=ASSET_MAX_AGE_S))
