"""The local stack behind ``dq up`` / ``dq demo``: Redis, S3, the API under gunicorn and
workers, all on 127.0.0.1, each with its log prefixed; stopping it stops all it started."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import urllib3

from dq.procs import Service, child_env, free_port, stop_process, wait_until
from dq.redis_server import start_redis
from dq.seaweedfs import create_bucket, s3_env, start_seaweedfs
from jobs.connections import create_redis
from jobs.keys import Keys
from jobs.settings import Settings
from jobs.tenants import DEFAULT_TENANT, KEY_PATTERN, KeyStore, check_secret, new_api_key, new_secret

WEBHOOK_SECRET_FILE = ".dq-webhook-secret"
API_KEY_FILE = ".dq-api-key"
LOCAL_WEBHOOK_ALLOWLIST = "127.0.0.1,localhost,::1"  # the local stack only; production allows nothing


class LogPump(threading.Thread):
    """Copies a child's output to ``sink``, each line prefixed with the component's name."""

    def __init__(self, name: str, stream: IO[bytes], sink: IO[str], lock: threading.Lock) -> None:
        super().__init__(name=f"log-{name}", daemon=True)
        self.prefix = f"{name:>8} | "
        self.stream = stream
        self.sink = sink
        self.lock = lock

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            with self.lock:
                self.sink.write(self.prefix + line + "\n")
                self.sink.flush()


@dataclass
class LocalStack:
    """Starts what ``settings`` does not point at (Redis unless ``DQ_REDIS_URL`` is set, S3
    unless ``DQ_S3_ENDPOINT_URL`` is), then the API, the deliverer and the workers, each
    configured by the same settings (``Settings.to_env``)."""

    settings: Settings
    api_port: int = 0
    workers: int | None = 1  # None: let the launcher detect NeuronCores / GPUs
    sink: IO[str] = field(default_factory=lambda: sys.stderr)  # read when made, not at import
    workdir: Path | None = None
    services: list[Service] = field(default_factory=list, init=False)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list, init=False)
    child_env: dict[str, str] = field(default_factory=dict, init=False)
    lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> LocalStack:
        if self.workdir is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="dq-stack-")
            self.workdir = Path(self.tmp.name)
        credentials: dict[str, str] = {}
        # 1. Redis: the configured one, else our own.
        if not self.settings.is_configured("redis_url"):
            redis_service = start_redis(self.workdir / "redis", stdout=subprocess.PIPE)
            self.adopt(redis_service)
            self.settings = self.settings.with_(redis_url=redis_service.url)
        # 2. S3: the configured endpoint, else SeaweedFS with a bucket made for us.
        if not self.settings.is_configured("s3_endpoint_url"):
            s3_service = start_seaweedfs(self.workdir / "s3", stdout=subprocess.PIPE)
            self.adopt(s3_service)
            credentials = s3_env(s3_service, self.settings.s3_bucket)
            self.settings = self.settings.with_(s3_endpoint_url=s3_service.url)
            create_bucket(
                s3_service.url, self.settings.s3_bucket, s3_service.extra["access_key"], s3_service.extra["secret_key"]
            )
        if self.settings.auth and self.settings.api_key:  # the local admin key (`with_local_api_key`)
            KeyStore(create_redis(self.settings), Keys(self.settings.key_prefix)).create(
                DEFAULT_TENANT, label="local", admin=True, key=self.settings.api_key
            )
        self.child_env = {**self.settings.to_env(), **credentials}
        self.child_env.pop("DQ_API_KEY", None)  # a client's secret: no component needs it
        # 3. The API under gunicorn.
        self.api_port = self.api_port or free_port()
        self.spawn("api", api_command(f"127.0.0.1:{self.api_port}"))
        http = urllib3.PoolManager(retries=False)
        wait_until(lambda: http.request("GET", self.api_url + "/healthz", timeout=1).status == 200, 30, "api")
        # 4. Webhook delivery: its own process, never on the generation path.
        self.spawn("webhooks", [sys.executable, "-m", "dq", "webhooks"])
        # 5. Workers through the launcher: one process per NeuronCore pair / GPU when it finds
        #    them, else `workers` CPU processes; each loads and warms its model before consuming.
        launcher = [sys.executable, "-m", "dq", "worker", "--model", self.settings.default_model]
        if self.workers:
            launcher += ["--workers", str(self.workers)]
        self.spawn("workers", launcher)
        return self

    def wait_ready(self, timeout_s: float = 120) -> None:
        http = urllib3.PoolManager(retries=False)
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}

        def ready() -> bool:
            reply = http.request("GET", self.api_url + "/v1/workers", headers=headers, timeout=2)
            states = [w["state"] for w in reply.json()["data"]]
            return states.count("ready") + states.count("busy") >= (self.workers or 1)

        wait_until(ready, timeout_s, "workers")

    def spawn(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd,
            env=child_env({**self.child_env, **(extra_env or {})}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        LogPump(name, proc.stdout, self.sink, self.lock).start()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> list[str]:
        return [name for name, proc in self.procs if proc.poll() is not None]

    def stop(self) -> None:
        # Workers first (warm shutdown: the running job finishes), then the API, then services.
        for name, proc in reversed(self.procs):
            stop_process(proc, grace_s=60 if name == "workers" else 10)
        self.procs.clear()
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def adopt(self, service: Service) -> None:
        """Own a started service: its log goes to the sink, ``stop`` stops it."""
        self.services.append(service)
        stream = service.proc.stdout
        if stream is not None:
            LogPump(service.name, stream, self.sink, self.lock).start()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def api_command(bind: str, workers: int = 2, app: str = "api:create_app()") -> list[str]:
    """The API under gunicorn, configured by ``api/gunicorn_conf.py`` (gevent workers)."""
    config = Path(__file__).resolve().parent.parent / "api" / "gunicorn_conf.py"
    return [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", bind, "--workers", str(workers), app]


def with_local_api_key(settings: Settings, directory: Path, out: IO[str] | None = None) -> Settings:
    """The local stack's admin key (tenant ``default``): ``DQ_API_KEY`` when set (so scripts know
    it), else the one in ``<directory>/.dq-api-key``, else a new one written there (mode 0600)
    and printed once. The ``dq`` client commands read the same two places."""
    if not settings.auth or settings.api_key:
        return settings
    path = directory / API_KEY_FILE
    key = read_api_key_file(path)
    if key is None:
        _, key = new_api_key()
        write_private(path, key)
        if out is not None:
            print(f"dq: local admin API key (saved to {path.resolve()}, shown once): {key}", file=out)
    elif out is not None:
        print(f"dq: local admin API key: {path.resolve()}", file=out)
    return settings.with_(api_key=key)


def read_api_key_file(path: Path) -> str | None:
    """The key saved in ``path``, if there is a well-formed one."""
    key = path.read_text().strip() if path.is_file() else ""
    return key if KEY_PATTERN.fullmatch(key) else None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (mode 0600, also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text + "\n")


def with_local_webhooks(settings: Settings, directory: Path, out: IO[str] | None = None) -> Settings:
    """Webhook settings for a local stack: a signing secret (``DQ_WEBHOOK_SECRET``, else the one in
    ``<directory>/.dq-webhook-secret``, else a new one written there, mode 0600) and an allow-list
    of this machine's loopback names (local receivers), unless ``DQ_WEBHOOK_ALLOWLIST`` is set."""
    changes: dict[str, str] = {}
    if not settings.is_configured("webhook_allowlist"):
        changes["webhook_allowlist"] = LOCAL_WEBHOOK_ALLOWLIST
    if settings.webhook_secret:
        return settings.with_(**changes)
    path = directory / WEBHOOK_SECRET_FILE
    secret = path.read_text().strip() if path.is_file() else ""
    try:
        check_secret(secret)
        verb = "uses"
    except ValueError:
        secret = new_secret()
        write_private(path, secret)
        verb = "wrote"
    if out is not None:
        print(f"dq: webhook signing secret: {verb} {path.resolve()} (verify deliveries with it)", file=out)
    return settings.with_(**changes, webhook_secret=secret)


def sleep_forever(stack: LocalStack) -> None:
    """Run until Ctrl-C, failing loudly if a component dies."""
    while True:
        dead = stack.check_alive()
        if dead:
            raise RuntimeError(f"component(s) exited: {', '.join(dead)}")
        time.sleep(0.5)
