"""The delivery loop behind ``dq webhooks``: never on the generation path.

The main thread claims due jobs (``Outbox.claim``), at most as many as there are free
threads, and hands each to a thread pool. A thread sends the job's head message, settles it,
and goes on with the job's next message while it holds the claim (up to ``CHAIN`` in a row).
All HTTP goes through one long-lived urllib3 ``PoolManager`` to the IP vetted by the SSRF
check (re-checked at every attempt), with the URL's host as ``Host`` and TLS server name,
no redirects, no urllib3 retries: retrying is the outbox's job, on the schedule, in Redis.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import redis
import urllib3

from jobs.connections import Role, create_redis
from jobs.keys import Keys
from jobs.models import rfc3339
from jobs.replicate import render_prediction_event
from jobs.settings import Settings
from jobs.storage import S3Storage
from jobs.tenants import DEFAULT_TENANT, Tenants, WebhookSecret
from jobs.view import Presigner, render_event
from webhooks.outbox import Outbox, PendingMessage, SettleAnswer
from webhooks.policy import Decision, Outcome, decide, parse_retry_after, parse_schedule
from webhooks.signing import Signer, check_secret
from webhooks.ssrf import Allowlist, Resolver, Target, WebhookHostUnresolved, WebhookURLRefused, check_webhook_url

log = logging.getLogger("dq.webhooks")
MAX_TIMEOUT_S = 15.0
MAX_REPLY_BYTES = 1024  # of a receiver's reply body, kept for the error message
CHAIN = 8  # messages of one job sent in a row under one claim before it goes back to the pool
POLL_S = 0.1


@dataclass(frozen=True)
class DeliveryConfig:
    schedule_s: tuple[float, ...]
    timeout_s: float
    concurrency: int
    claim_timeout_s: float
    allowlist: Allowlist
    retention_s: int
    poll_s: float = POLL_S

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryConfig:
        """Validated; a ``ValueError`` names the variable that is wrong."""
        if settings.webhook_secret:
            try:
                check_secret(settings.webhook_secret)
            except ValueError as exc:
                raise ValueError(f"DQ_WEBHOOK_SECRET {exc}") from None
        if not 0 < settings.webhook_timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"DQ_WEBHOOK_TIMEOUT_S must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds")
        if settings.webhook_concurrency < 1:
            raise ValueError("DQ_WEBHOOK_CONCURRENCY must be at least 1")
        if settings.webhook_claim_timeout_s <= settings.webhook_timeout_s:
            raise ValueError("DQ_WEBHOOK_CLAIM_TIMEOUT_S must be longer than DQ_WEBHOOK_TIMEOUT_S")
        return cls(
            schedule_s=parse_schedule(settings.webhook_retry_schedule_s),
            timeout_s=settings.webhook_timeout_s,
            concurrency=settings.webhook_concurrency,
            claim_timeout_s=settings.webhook_claim_timeout_s,
            allowlist=Allowlist.parse(settings.webhook_allowlist),
            retention_s=settings.job_retention_s,
        )


@dataclass(frozen=True)
class Reply:
    """What one HTTP attempt got: a status, or None with the error (refused, timed out, …)."""

    status: int | None
    latency_ms: float
    error: str | None = None
    retry_after: str | None = None


class Sender:
    """One long-lived pool manager; pools are keyed by the pinned IP (and TLS server name)."""

    def __init__(self, timeout_s: float, connections_per_host: int) -> None:
        self.timeout = urllib3.Timeout(total=timeout_s)
        self.http = urllib3.PoolManager(
            num_pools=100, maxsize=connections_per_host, retries=False, timeout=self.timeout
        )

    def post(self, target: Target, body: bytes, headers: dict[str, str]) -> Reply:
        started = time.perf_counter()
        tls = {"server_hostname": target.host, "assert_hostname": target.host} if target.scheme == "https" else None
        try:
            pool = self.http.connection_from_host(target.ip, target.port, target.scheme, pool_kwargs=tls)
            response = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers={**headers, "Host": target.host_header},
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=self.timeout,
                preload_content=False,
                release_conn=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Reply(None, _ms_since(started), _describe(exc))
        snippet = b""
        try:
            snippet = response.read(MAX_REPLY_BYTES)
        except (urllib3.exceptions.HTTPError, OSError):
            pass
        finally:
            if response.length_remaining != 0:  # unread or unknown rest: don't reuse the connection
                response.close()
            response.release_conn()
        status = response.status
        error = None
        if not 200 <= status < 300:
            text = snippet.decode(errors="replace").strip()[:200]
            error = f"HTTP {status}" + (f": {text}" if text else "")
        return Reply(status, _ms_since(started), error, response.headers.get("Retry-After"))

    def close(self) -> None:
        self.http.clear()


def render_body(event: dict[str, Any], presign: Presigner | None, output_secret: str | None = None) -> str:
    """The event as JSON (``jobs.view.render_event``: the same body as the ``/events`` stream); for
    a job created through the Replicate routes, the prediction itself, as Replicate sends it (its
    output URLs signed with ``output_secret``, the tenant's current secret)."""
    body = render_prediction_event(event, output_secret) or render_event(event, presign)
    return json.dumps(body, separators=(",", ":"))


class SecretCache:
    """Each tenant's signing secrets, read from Redis at most every ``ttl_s`` (a rotation is
    seen within that)."""

    def __init__(self, tenants: Tenants, ttl_s: float = 1.0) -> None:
        self.tenants = tenants
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, WebhookSecret]] = {}
        self._lock = threading.Lock()

    def signing(self, tenant: str, now: float) -> list[str]:
        with self._lock:
            hit = self._cache.get(tenant)
        if hit is None or now - hit[0] > self.ttl_s:
            hit = (now, self.tenants.webhook_secret(tenant))
            with self._lock:
                self._cache[tenant] = hit
        return hit[1].signing(now)


class Deliverer:
    def __init__(
        self,
        config: DeliveryConfig,
        outbox: Outbox,
        presign: Presigner | None,
        secrets: SecretCache,
        *,
        sender: Sender | None = None,
        resolve: Resolver | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.presign = presign
        self.secrets = secrets
        self.signer = Signer()
        self.sender = sender or Sender(config.timeout_s, config.concurrency)
        self.resolve = resolve
        self.rng = rng or random.Random()
        self.clock = clock
        self.stopping = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings, config: DeliveryConfig) -> Deliverer:
        client = create_redis(settings, Role.DELIVERER)
        keys = Keys(settings.key_prefix)
        outbox = Outbox(client, keys, retention_s=settings.job_retention_s)
        tenants = Tenants(client, keys, default_secret=settings.webhook_secret)
        return cls(config, outbox, S3Storage(settings).presign, SecretCache(tenants))

    # -- the loop -------------------------------------------------------------------
    def run(self) -> None:
        """Deliver until ``stop()``; then finish the attempts in flight (each bounded by the timeout)."""
        inflight: set[futures.Future[None]] = set()
        with futures.ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="webhook") as pool:
            while not self.stopping.is_set():
                inflight = {f for f in inflight if not f.done()}
                free = self.config.concurrency - len(inflight)
                claimed = self._claim(free) if free > 0 else []
                for job_id in claimed:
                    inflight.add(pool.submit(self.deliver_job, job_id))
                if claimed:
                    continue
                if free > 0:
                    self._wait_for_events()
                else:
                    futures.wait(inflight, timeout=self.config.poll_s, return_when=futures.FIRST_COMPLETED)
            futures.wait(inflight)

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.sender.close()
        self.outbox.redis.close()

    def deliver_due(self, limit: int = 1000) -> int:
        """Claim the due jobs and deliver them in this thread (one-shot runs and tests)."""
        claimed = self.outbox.claim(self.clock(), self.config.claim_timeout_s, limit)
        for job_id in claimed:
            self.deliver_job(job_id)
        return len(claimed)

    def _wait_for_events(self) -> None:
        """Until an event is emitted or ``poll_s`` passes (retries fall due by time alone)."""
        try:
            self.outbox.wait_for_events(self.config.poll_s)
        except redis.RedisError as exc:
            log.warning("cannot wait for webhook events (%s); retrying in 1 s", exc)
            self.stopping.wait(1.0)

    def _claim(self, limit: int) -> list[str]:
        try:
            return self.outbox.claim(self.clock(), self.config.claim_timeout_s, limit)
        except redis.RedisError as exc:
            log.warning("cannot claim due webhooks (%s); retrying in 1 s", exc)
            self.stopping.wait(1.0)
            return []

    # -- one job --------------------------------------------------------------------
    def deliver_job(self, job_id: str) -> None:
        """Send the job's due messages in order while holding its claim; never raises."""
        try:
            for n in range(CHAIN):
                keep = n + 1 < CHAIN and not self.stopping.is_set()
                if self.deliver_head(job_id, keep_claim=keep) is not SettleAnswer.NEXT:
                    return
        except Exception:  # one job's trouble must not end the loop; its claim lapses and comes back
            log.exception("delivering webhooks of job %s failed; it will be retried after the claim timeout", job_id)

    def deliver_head(self, job_id: str, keep_claim: bool = False) -> SettleAnswer:
        """One attempt at the job's head message, settled in the outbox; returns the settle answer."""
        message = self.outbox.head(job_id)
        if message is None:
            self.outbox.release(job_id, self.clock())
            return SettleAnswer.EMPTY
        if message.event is None:
            log.warning("job %s: event %s expired before delivery; dropped", job_id, message.msg_id)
            return self.outbox.settle(message, None, final=True, now=self.clock())
        attempt = message.attempts_made + 1
        at = self.clock()
        reply, decision = self._attempt(message, attempt, at)
        done = self.clock()
        next_at = done + decision.delay_s if decision.delay_s is not None else None
        record = {
            "delivery_id": message.msg_id,
            "event": message.event["type"],
            "attempt": attempt,
            "at": rfc3339(at),
            "status_code": reply.status,
            "latency_ms": round(reply.latency_ms, 1),
            "outcome": decision.outcome.value,
            "error": reply.error,
            "next_attempt_at": rfc3339(next_at),
        }
        log.info(
            "%s %s attempt %d: %s%s",
            message.msg_id,
            message.event["type"],
            attempt,
            decision.outcome.value,
            f" ({reply.error})" if reply.error else f" ({reply.status}, {reply.latency_ms:.0f} ms)",
        )
        return self.outbox.settle(
            message,
            record,
            final=decision.outcome.is_final(),
            now=done,
            next_due=next_at,
            keep_claim_until=done + self.config.claim_timeout_s if keep_claim else None,
            delivery_s=_delivery_s(message, decision.outcome, done),
        )

    def _attempt(self, message: PendingMessage, attempt: int, at: float) -> tuple[Reply, Decision]:
        assert message.event is not None
        url = message.event.get("job", {}).get("webhook")
        if not url:
            return Reply(None, 0.0, "the job has no webhook URL"), Decision(Outcome.REFUSED)
        try:
            target = check_webhook_url(url, self.config.allowlist, self.resolve)
        except WebhookHostUnresolved as exc:  # DNS may come back: retry on the schedule
            reply = Reply(None, 0.0, str(exc))
            return reply, decide(None, attempt, self.config.schedule_s, rng=self.rng)
        except WebhookURLRefused as exc:
            return Reply(None, 0.0, f"not sent: the URL {exc}"), Decision(Outcome.REFUSED)
        tenant = message.event.get("job", {}).get("tenant") or DEFAULT_TENANT
        secrets = self.secrets.signing(tenant, at)
        try:
            body = render_body(message.event, self.presign, secrets[0])
        except Exception as exc:  # a broken snapshot or presigner: recorded and retried, never fatal
            log.exception("job %s: cannot render event %s", message.job_id, message.msg_id)
            reply = Reply(None, 0.0, f"could not render the event: {exc}")
            return reply, decide(None, attempt, self.config.schedule_s, rng=self.rng)
        headers = self.signer.headers(secrets, message.msg_id, body, at)
        reply = self.sender.post(target, body.encode(), headers)
        retry_after = parse_retry_after(reply.retry_after, self.clock())
        return reply, decide(reply.status, attempt, self.config.schedule_s, retry_after, self.rng)


def _delivery_s(message: PendingMessage, outcome: Outcome, done: float) -> float | None:
    """Seconds from the event to its delivery (None unless it was delivered)."""
    if outcome is not Outcome.DELIVERED or message.event is None:
        return None
    return max(0.0, done - float(message.event.get("timestamp") or done))


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # urllib3 wraps the socket error
    text = str(reason or exc)
    if isinstance(exc, urllib3.exceptions.NewConnectionError) or isinstance(reason, ConnectionError):
        kind = "connection failed"  # (NewConnectionError subclasses the timeout error: test it first)
    elif "timed out" in text.lower() or isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        kind = "timeout"
    else:
        kind = type(exc).__name__
    return f"{kind}: {text}"[:300]
