"""Fixtures: a real redis-server and a real SeaweedFS on free ports for the session, the
tiny models built once, the Flask app from its factory, and real worker processes."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from dq.procs import Service, free_port, stop_process, wait_until
from dq.redis_server import start_redis
from dq.seaweedfs import create_bucket, s3_env, start_seaweedfs
from jobs.keys import Keys
from jobs.settings import Settings
from jobs.tenants import DEFAULT_TENANT, KeyStore
from jobs.workers import WorkerRegistry
from tests.webhook_receiver import SECRET, Receiver

BUCKET = "dq-test"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dq")


@pytest.fixture(scope="session")
def redis_service(session_dir: Path) -> Iterator[Service]:
    service = start_redis(session_dir / "redis")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def s3_service(session_dir: Path) -> Iterator[Service]:
    log = (session_dir / "seaweedfs.log").open("wb")
    service = start_seaweedfs(session_dir / "s3", stdout=log)
    create_bucket(service.url, BUCKET, service.extra["access_key"], service.extra["secret_key"])
    yield service
    service.stop()
    log.close()


@pytest.fixture(scope="session")
def models_dir(session_dir: Path) -> Path:
    """tiny-sd (dynamic shapes), tiny-static (Neuron-style static 64x64, 2 images per prompt),
    tiny-broken (the tiny weights, served by a backend that raises), tiny-batch (static 64x64,
    a batch of 4 prompts per call: the scheduler packs jobs into it)."""
    from worker.pipelines.tiny import StaticShape, build_tiny_model, declare_static_shape

    root = session_dir / "models"
    root.mkdir()
    shared = REPO_ROOT / "compiled" / "tiny-sd"
    if (shared / "model_index.json").exists():
        shutil.copytree(shared, root / "tiny-sd")
    else:
        build_tiny_model(root / "tiny-sd")
    shutil.copytree(root / "tiny-sd", root / "tiny-static")
    declare_static_shape(root / "tiny-static", StaticShape(64, 64, 1, 2))
    shutil.copytree(root / "tiny-sd", root / "tiny-broken")
    shutil.copytree(root / "tiny-sd", root / "tiny-batch")  # as if compiled for 4 prompts per call
    declare_static_shape(root / "tiny-batch", StaticShape(64, 64, 4, 1))
    return root


@pytest.fixture
def redis_client(redis_service: Service) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_service.url)
    client.flushdb()  # our own server: safe to flush between tests
    yield client
    client.close()


@pytest.fixture
def settings(redis_service: Service, models_dir: Path, redis_client: redis.Redis) -> Settings:
    return Settings(redis_url=redis_service.url, models_dir=models_dir, s3_bucket=BUCKET, s3_endpoint_url="")


@pytest.fixture
def s3_settings(settings: Settings, s3_service: Service, monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = s3_env(s3_service, BUCKET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env["AWS_SECRET_ACCESS_KEY"])
    return settings.with_(s3_endpoint_url=s3_service.url)


@pytest.fixture
def app(s3_settings: Settings):  # type: ignore[no-untyped-def]
    from api import create_app

    flask_app = create_app(s3_settings.with_(webhook_secret=SECRET))
    flask_app.testing = True
    return flask_app


def keyed_client(app: Any, key: str) -> Any:
    """A Flask test client that sends ``key`` with every request."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return test_client


@pytest.fixture
def admin_key(redis_client: redis.Redis) -> str:
    """An admin key of tenant ``default`` (whose webhook secret is ``DQ_WEBHOOK_SECRET``: SECRET
    in the tests), with limits no test reaches."""
    _, key = KeyStore(redis_client).create(
        DEFAULT_TENANT, label="tests", admin=True, rate_limit_per_s=100_000, rate_limit_burst=100_000
    )
    return key


@pytest.fixture
def client(app, admin_key: str):  # type: ignore[no-untyped-def]
    return keyed_client(app, admin_key)


@pytest.fixture
def tenant_client(app: Any, redis_client: redis.Redis) -> Callable[..., Any]:
    """``tenant_client("acme", **limits)``: a client with a new non-admin key of that tenant
    (``on=`` another app than the ``app`` fixture's)."""

    def make(tenant: str, on: Any = None, **limits: Any) -> Any:
        _, key = KeyStore(redis_client).create(tenant, label="tests", **limits)
        return keyed_client(on or app, key)

    return make


WorkerFactory = Callable[..., subprocess.Popen[bytes]]


def worker_env(settings: Settings, s3: Service, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(s3_env(s3, BUCKET))
    env.update(
        {
            "DQ_REDIS_URL": settings.redis_url,
            "DQ_MODELS_DIR": str(settings.models_dir),
            "DQ_HEARTBEAT_S": "0.5",
            "DQ_TORCH_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def start_worker(s3_settings: Settings, s3_service: Service, session_dir: Path) -> Iterator[WorkerFactory]:
    """Start real worker processes (``dq worker-process``); wait until each reports ready."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    registry = WorkerRegistry(redis.Redis.from_url(s3_settings.redis_url), Keys())

    def start(
        model: str = "tiny-sd", name: str | None = None, wait: bool = True, **env: str
    ) -> subprocess.Popen[bytes]:
        name = name or f"w{len(procs)}.{model}"
        log = (session_dir / f"{name}-{time.monotonic_ns()}.log").open("wb")
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dq", "worker-process", "--model", model],
            env=worker_env(s3_settings, s3_service, DQ_WORKER_NAME=name, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        procs.append(proc)
        if wait:
            wait_until(
                lambda: any(w.name == name and w.state in ("ready", "busy") for w in registry.live()),
                120,
                f"worker {name}",
                proc,
            )
        return proc

    yield start
    for proc in procs:
        stop_process(proc, grace_s=20)
    for log in logs:
        log.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real webhook receiver on 127.0.0.1 that verifies every signature."""
    r = Receiver(SECRET).start()
    yield r
    r.close()


@contextmanager
def serve_api(settings: Settings, s3: Service, log_path: Path, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """The API under gunicorn (as `dq up` runs it) on a free port, over TLS with ``tls`` = (certificate,
    key); yields its base URL."""
    port = free_port()
    log = log_path.open("wb")
    env = {**os.environ, **settings.to_env(), **s3_env(s3, BUCKET)}
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    command += ["--worker-class", "gthread", "--threads", "4", "--graceful-timeout", "5"]
    command += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])] if tls else []
    proc = subprocess.Popen(
        [*command, "api:create_app()"], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(f"{url}/readyz", cafile=tls[0] if tls else None) == 200, 60, "API", proc)
        yield url
    finally:
        stop_process(proc, grace_s=10)
        log.close()


@pytest.fixture
def live_api(s3_settings: Settings, s3_service: Service, session_dir: Path) -> Iterator[str]:
    """The API under gunicorn on a free port, with the test settings; yields its base URL."""
    with serve_api(s3_settings, s3_service, session_dir / f"api-{time.monotonic_ns()}.log") as url:
        yield url


def http_status(url: str, key: str | None = None, cafile: Path | None = None) -> int:
    """The status of a GET (with the key as Bearer, if given; trusting ``cafile`` for https)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
