"""The one place configuration is read.

Every entry point (API factory, worker, CLI) calls ``Settings.from_env()`` once and
passes the result down; nothing reads ``os.environ`` at import time.  Each field maps to
one ``DQ_*`` variable, documented in the README's configuration table (kept in sync by
``tests/test_settings.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Settings:
    """Typed configuration; units are in the names."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_max_connections: int = 1000  # per process; a caller beyond it waits (≤ 5 s) for a free one
    api_url: str = "http://127.0.0.1:8000"  # where the `dq` client commands find the API
    key_prefix: str = "dq"
    log_format: str = "text"  # or "json": one JSON object per line (jobs/logs.py)
    models_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "compiled")
    default_model: str = "tiny-sd"
    model_owner: str = "dq"  # the Replicate-compatible routes address a model as <owner>/<name>
    # S3 (credentials come from boto3's standard chain: AWS_ACCESS_KEY_ID, profiles, roles)
    s3_bucket: str = "diffusion-queue"
    s3_endpoint_url: str = ""
    s3_public_endpoint_url: str = ""  # host clients use in presigned URLs (default: s3_endpoint_url)
    s3_region: str = "us-east-1"
    s3_prefix: str = "outputs"
    s3_presign_ttl_s: int = 3600
    s3_upload_retry_s: float = 120.0  # keep retrying a failing upload (with backoff) this long
    # Jobs
    idempotency_ttl_s: int = 86_400
    job_ttl_s: int = 86_400  # default ttl_seconds: a job queued longer fails as "expired"
    job_timeout_s: int = 600  # default timeout_seconds: a job running longer fails as "timeout"
    max_attempts: int = 3  # starts before a job fails as "max_attempts"
    job_retention_s: int = 7 * 86_400
    max_body_bytes: int = 64 * 1024
    # Identity and limits (`jobs/tenants.py`): defaults for keys that set none; 0 = no limit
    auth: bool = True  # false: no keys asked, every caller is the admin of tenant "default"
    api_key: str = ""  # the key the `dq` client commands send (else ./.dq-api-key); `dq up` registers it
    rate_limit_per_s: float = 100.0  # submits per second per key (token bucket)
    rate_limit_burst: int = 200
    max_active_jobs: int = 10_000  # jobs queued + running per key
    # Backpressure per model: refuse new jobs (429, Retry-After) past these; 0 = never
    max_backlog: int = 100_000
    max_queue_wait_s: float = 3600.0  # estimated wait: backlog / live workers × recent generation time
    no_worker_s: float = 0.0  # 503 when no worker of the model was seen this long (0: accept, scale from zero)
    # Worker
    backend: str = "auto"
    device: str = "cpu"
    worker_name: str = ""
    torch_threads: int = 0
    lease_s: int = 30
    progress_interval_s: float = 0.25  # a worker writes progress (and renews its lease) at most this often
    progress_event_interval_s: float = 0.5  # `job.progress` webhook events at most this often per job
    heartbeat_s: float = 2.0
    stall_s: float = 0.0  # a generation with no step this long is stalled (0: from the warm-up, ≥ the floor)
    stall_floor_s: float = 30.0
    warmup: bool = True
    reconcile_interval_s: float = 2.0
    emulated_seconds: float = 0.0  # DQ_BACKEND=emulated: seconds each job holds the "core"
    emulated_batch_cost: float = 1.0  # DQ_BACKEND=emulated, static batch: each extra prompt's cost, × one job
    # Scheduling (docs/scheduling.md)
    priority_aging_s: float = 600.0  # a pending job moves up a priority band after waiting this long
    batch_wait_ms: float = 50.0  # a worker waits this long for compatible jobs to fill a static batch
    pick_timeout_s: float = 30.0  # a job picked but never started (its worker died) goes back after this
    drain_idle_s: float = 1.0  # a worker out of jobs listens this long for the next one before returning to Celery
    celery_events: bool = False  # Celery task events and remote control on, for Flower (docs/operations.md)
    # Set for each worker process by the launcher (`dq worker`); read here, never elsewhere.
    neuron_rt_visible_cores: str = field(default="", metadata={"env": "NEURON_RT_VISIBLE_CORES"})
    cuda_visible_devices: str = field(default="", metadata={"env": "CUDA_VISIBLE_DEVICES"})
    worker_restarts: int = 0  # how many times the launcher restarted this slot (dq_worker_restarts_total)
    # Webhooks (`dq webhooks` delivers them; the API checks URLs against the allow-list)
    webhook_allowlist: str = ""  # hosts / CIDRs permitted although private or loopback
    webhook_secret: str = ""  # whsec_<base64>: the first secret of tenant "default" (others get their own)
    webhook_rotation_s: float = 86_400.0  # after a rotation, deliveries carry both signatures this long
    webhook_retry_schedule_s: str = "0,5,300,1800,7200,18000,36000,50400,72000,86400"
    webhook_timeout_s: float = 10.0  # one attempt, connect to last byte; at most 15
    webhook_concurrency: int = 16  # attempts in flight per `dq webhooks` process
    webhook_claim_timeout_s: float = 60.0  # a crashed deliverer's claim on a job comes back after this

    # Names of the fields set explicitly (environment or overrides) rather than defaulted.
    configured: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata={"env": ""})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in setting_fields():
            raw = env.get(env_name(f.name))
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        values.update(overrides)
        return cls(**values, configured=frozenset(values))

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes, configured=self.configured | frozenset(changes))

    def is_configured(self, name: str) -> bool:
        """Whether ``name`` was set explicitly (e.g. ``DQ_REDIS_URL``) instead of left at its default."""
        return name in self.configured

    def to_env(self) -> dict[str, str]:
        """Every setting as the environment variables ``from_env`` reads back (for child processes)."""
        env: dict[str, str] = {}
        for f in setting_fields():
            value = getattr(self, f.name)
            if f.metadata.get("env") and not value:
                continue  # NEURON_RT_VISIBLE_CORES & co.: unset, not empty
            env[env_name(f.name)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return env


def setting_fields() -> list[Any]:
    """The fields that map to an environment variable."""
    return [f for f in fields(Settings) if f.metadata.get("env", None) != ""]


def env_name(field_name: str) -> str:
    """``DQ_<FIELD>``, or the variable a field names itself (``NEURON_RT_VISIBLE_CORES``)."""
    for f in fields(Settings):
        if f.name == field_name and f.metadata.get("env"):
            return str(f.metadata["env"])
    return "DQ_" + field_name.upper()


def _coerce(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _bool(raw)
        if kind == "Path":
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{env_name(name)}: {exc}") from exc
