"""The web console at ``/``, in a real headless browser (Debian's chromium driven by Playwright)
against the API under gunicorn, a real worker, the webhook deliverer and a receiver: sign in
with a key, submit, follow the progress, see the image; the job page lists the webhook
deliveries and redelivers one; an admin sees the workers and queues; no console errors.

``DQ_TEST_SCREENSHOTS=docs/img`` saves the screenshots the README shows. Without chromium
(``/usr/bin/chromium``, or ``DQ_TEST_CHROMIUM``) the browser tests are skipped; CI installs it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from flask import Flask
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from api.console import ASSET_DIR, ASSETS
from dq.client import Client
from dq.procs import Service, wait_until
from jobs.settings import Settings
from jobs.tenants import DEFAULT_TENANT, KeyStore
from tests.conftest import DelivererFactory, WorkerFactory, serve_api
from tests.webhook_receiver import SECRET, Receiver

CHROMIUM = Path(os.environ.get("DQ_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = os.environ.get("DQ_TEST_SCREENSHOTS", "")
PROMPT = 'a pig with wings & "golden" feathers over <city> skyscrapers'  # parsed as HTML, <city> would vanish
HOSTILE = '<img src=x onerror="window.__owned = 1">'  # parsed as HTML, it would run
EVERY_STEP = {"DQ_PROGRESS_INTERVAL_S": "0", "DQ_PROGRESS_EVENT_INTERVAL_S": "0"}  # an event per step
EMULATED = {"DQ_BACKEND": "emulated", "DQ_EMULATED_SECONDS": "2"}  # a job outlasts a poll interval
TIMEOUT_MS = 60_000
PART_WAY = """() => {
  const p = document.getElementById("job-progress");
  const step = Number(p && p.dataset.step);
  return p && p.dataset.status === "running" && 0 < step && step < Number(p.dataset.total);
}"""
STEPS = 25


# -- the page and its files, without a browser ------------------------------------------------


def test_the_console_is_open_and_locked_to_this_server(app: Flask) -> None:
    plain = app.test_client()  # no key: the page and its files are open, the data is not
    page = plain.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    html = page.get_data(as_text=True)
    referenced = set(re.findall(r'(?:src|href)="console/([^"]+)"', html))
    assert referenced == ASSETS
    for name in referenced:
        with plain.get(f"/console/{name}") as asset:
            assert asset.status_code == 200 and asset.headers["Content-Security-Policy"] == csp
    assert plain.get("/console/index.html").status_code == 404  # only the listed files
    assert plain.get("/console/..%2Fconsole.py").status_code == 404
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # nothing loaded from elsewhere
    assert plain.get("/v1/jobs").status_code == 401


def test_the_script_never_writes_html() -> None:
    script = (ASSET_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


# -- in the browser ----------------------------------------------------------------------------


@pytest.fixture
def hooks_api(s3_settings: Settings, s3_service: Service, session_dir: Path) -> Iterator[str]:
    """The API under gunicorn, webhooks to 127.0.0.1 allowed and signed with the receiver's SECRET."""
    settings = s3_settings.with_(webhook_allowlist="127.0.0.1", webhook_secret=SECRET)
    with serve_api(settings, s3_service, session_dir / f"console-api-{time.monotonic_ns()}.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@dataclass
class Console:
    """What the tab's console said. The only errors a test may allow are the browser's own
    notes on an HTTP refusal it provoked on purpose (``allow(403, "/v1/workers")``)."""

    errors: list[str] = field(default_factory=list)
    allowed: set[tuple[int, str]] = field(default_factory=set)

    def allow(self, status: int, path: str) -> None:
        self.allowed.add((status, path))

    def on_message(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        refused = re.match(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        where = str(message.location.get("url", ""))
        if refused and any(int(refused[1]) == s and where.endswith(p) for s, p in self.allowed):
            return
        self.errors.append(f"console: {message.text} at {where}")


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    """A fresh tab; a console error or an uncaught exception fails the test. Tests list it after
    the servers, so it closes first (a timer firing against a stopped API is no error of ours)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    tab.on("console", console.on_message)
    tab.on("pageerror", lambda exc: console.errors.append(f"pageerror: {exc}"))
    tab.set_default_timeout(TIMEOUT_MS)
    yield tab
    context.close()
    assert not console.errors, console.errors


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"console-{name}.png"), full_page=True)


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(url + "/")
    expect(page.locator("#view-signin")).to_be_visible()
    page.fill("#signin-key", key)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#view-home")).to_be_visible()
    expect(page.locator("#model option")).not_to_have_count(0)


def image_loaded(page: Page, selector: str) -> None:
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].some(i => i.complete && i.naturalWidth > 0)", arg=selector
    )


def refresh_deliveries_until(page: Page, shown: Callable[[], bool]) -> None:
    """Click the deliveries' Refresh until ``shown`` (the deliverer records an attempt just
    after the receiver has answered it)."""

    def check() -> bool:
        page.click("#refresh-deliveries")
        page.wait_for_timeout(250)
        return shown()

    wait_until(check, 30, "the deliveries on the job page")


def test_submit_follow_and_see_the_image_then_its_deliveries(
    hooks_api: str,
    start_worker: WorkerFactory,
    start_deliverer: DelivererFactory,
    receiver: Receiver,
    redis_client: redis.Redis,
    page: Page,
    console: Console,
) -> None:
    url = hooks_api
    start_worker("tiny-sd", **EVERY_STEP)  # the real tiny diffusers pipeline
    start_deliverer()
    _, key = KeyStore(redis_client).create(DEFAULT_TENANT, label="console", admin=False)
    hostile = Client(url, key).submit({"prompt": HOSTILE, "negative_prompt": HOSTILE, "num_inference_steps": 2})

    console.allow(401, "/v1/models")  # the wrong key, on purpose
    console.allow(403, "/v1/workers")  # how the console learns the key is not an admin's
    page.goto(url + "/")
    screenshot(page, "sign-in")
    page.fill("#signin-key", "dq_nope_nope")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#flash")).to_contain_text("Sign-in failed")
    sign_in(page, url, key)
    expect(page.locator("#nav-admin")).to_be_hidden()  # not an admin
    expect(page.locator("#model")).to_have_value("tiny-sd")
    expect(page.locator("#width")).to_have_attribute("step", "8")  # dynamic shapes: a number input

    page.fill("#prompt", PROMPT)
    page.fill("#steps", str(STEPS))
    page.fill("#seed", "7")
    page.select_option("#format", "webp")
    page.click("#submit-form summary")
    page.fill("#negative-prompt", "blurry")
    page.fill("#webhook", receiver.url)
    page.click("#submit-button")

    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function(PART_WAY)  # the stream shows the job running, part way through
    screenshot(page, "progress")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    image_loaded(page, "img.output-image")
    expect(page.locator(".output figcaption")).to_contain_text("webp · seed 7")
    inputs = page.locator("table.kv").first
    expect(inputs).to_contain_text(PROMPT)  # shown as text
    expect(page.locator("#view-job")).not_to_contain_text("null")

    def succeeded_hooks() -> int:
        return sum(r["type"] == "job.succeeded" for r in receiver.delivered_for(job_id))

    receiver.wait_until(lambda: succeeded_hooks() == 1, 30, "the job.succeeded webhook")
    rows = page.locator("#deliveries tr.delivery")
    delivered = rows.filter(has_text="delivered")
    refresh_deliveries_until(page, lambda: delivered.filter(has_text="job.succeeded").count() == 1)
    expect(delivered.filter(has_text="job.started")).to_have_count(1)
    screenshot(page, "job")
    before = rows.count()
    rows.filter(has_text="job.succeeded").locator("button.redeliver").click()
    expect(page.locator("#flash")).to_contain_text("Queued job.succeeded")
    receiver.wait_until(lambda: succeeded_hooks() == 2, 30, "the redelivered job.succeeded")
    refresh_deliveries_until(page, lambda: rows.count() == before + 1)  # the message again, attempts from 1
    expect(delivered.filter(has_text="job.succeeded")).to_have_count(2)

    page.click("a.brand")
    image_loaded(page, ".gallery .tile img")
    captions = page.locator(".gallery figcaption")
    expect(captions).to_have_text([PROMPT, HOSTILE])  # newest first; text, never markup
    screenshot(page, "home")
    captions.nth(1).locator("xpath=..").locator("a").click()  # the hostile job's page
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("table.kv").first.locator("td", has_text="onerror")).to_have_count(2)
    assert page.evaluate("() => window.__owned") is None
    assert page.url.endswith(hostile["id"])


def test_without_the_event_stream_the_job_page_polls(
    live_api: str, start_worker: WorkerFactory, admin_key: str, page: Page, console: Console
) -> None:
    url = live_api
    start_worker("tiny-sd", **EMULATED)
    console.allow(503, "/events")  # a proxy that does not pass the stream through, say
    streams: list[str] = []
    polls: list[str] = []

    def refuse(route: Route) -> None:
        streams.append(route.request.url)
        route.fulfill(status=503, content_type="application/problem+json", body='{"title": "no streams here"}')

    page.route(re.compile(r".*/v1/jobs/[0-9a-f]{32}/events$"), refuse)
    page.on("request", lambda r: polls.append(r.url) if re.search(r"/v1/jobs/[0-9a-f]{32}$", r.url) else None)
    sign_in(page, url, admin_key)
    page.fill("#prompt", "a pig with wings")
    page.fill("#steps", "10")
    page.click("#submit-button")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    image_loaded(page, "img.output-image")
    assert len(streams) == 1 and len(polls) >= 2  # tried the stream once, then polled until the end


def test_an_admin_sees_the_workers_and_queues(
    live_api: str, start_worker: WorkerFactory, admin_key: str, page: Page
) -> None:
    url = live_api
    start_worker("tiny-sd", name="console-worker", **EMULATED)
    sign_in(page, url, admin_key)
    page.click("#nav-admin")
    workers = page.locator("#workers tr.worker")
    expect(workers).to_have_count(1)
    expect(workers).to_contain_text("console-worker")
    expect(workers).to_contain_text("ready")
    expect(page.locator("#queues tr.queue", has_text="tiny-static")).to_be_visible()
    queue = page.locator("#queues tr.queue", has_text="tiny-batch")
    queue.locator("button").click()
    expect(queue).to_contain_text("yes")  # paused
    screenshot(page, "admin")
    queue.locator("button").click()
    expect(queue.locator("button")).to_have_text("Pause")
