"""JobStore: a job's state and every transition of it, each one atomic (a Lua script).

The job hash is the source of truth; Celery only carries ``(job_id, model)``. Terminal
states are final: every script re-checks the current status (and, for a running job, the
attempt number it was started with, which fences out a stale worker) before it writes.
The scripts are in ``jobs/scripts.py``; what each can answer is a ``str`` enum here.

Every job belongs to a tenant. The reads and transitions a client reaches take the caller's
``tenant`` as a required keyword (``ANY_TENANT`` for admins and the workers), so no route
can forget the check; another tenant's job reads exactly like a missing one.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from jobs import scripts
from jobs.connections import as_text
from jobs.keys import Keys
from jobs.logs import log_transition
from jobs.lua import BoundScript
from jobs.models import JobStatus
from jobs.stats import job_outcome
from jobs.transport import TOKENS, work_message

ANY_TENANT = "*"  # the scope of admins, workers and the reconciler (never a tenant's name)


class CreateOutcome(str, enum.Enum):
    """What ``JobStore.create`` did."""

    CREATED = "created"
    EXISTS = "exists"  # the Idempotency-Key already names a job (compare the request hashes)
    BACKLOG = "backlog"  # the model's queue is full, or its estimated wait too long (429)
    NO_WORKER = "no_worker"  # no worker of the model seen for DQ_NO_WORKER_S (503)
    QUOTA = "quota"  # the key has max_active_jobs queued or running (429)
    RATE = "rate"  # the key's token bucket is empty (429)


@dataclass(frozen=True)
class Owner:
    """Who creates a job: its tenant, and the prefix of the API key ('' when auth is off)."""

    tenant: str
    key: str = ""


@dataclass(frozen=True)
class Limits:
    """A key's limits; 0 means none."""

    rate_per_s: float = 0.0
    burst: int = 0
    max_active: int = 0
    max_priority: str = "high"  # the highest priority its jobs may ask for


@dataclass(frozen=True)
class Backpressure:
    """When a model refuses new jobs (0 = never, by that rule)."""

    max_backlog: int = 0
    max_wait_s: float = 0.0
    worker_stale_s: float = 10.0  # a worker silent this long no longer counts as live
    no_worker_s: float = 0.0  # no worker seen this long: 503 (0: accept, e.g. scale from zero)


class ClaimOutcome(str, enum.Enum):
    """What ``JobStore.start`` did: started it, or why not (the job's status, or gone)."""

    STARTED = "started"
    MAX_ATTEMPTS = "max_attempts"  # out of attempts: the claim failed the job instead
    MISSING = "missing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class ProgressAnswer(str, enum.Enum):
    """What a running job's worker is told when it reports a step."""

    OK = "ok"
    CANCEL = "cancel"  # a cancel was requested: stop
    LOST = "lost"  # this attempt no longer holds the job: abandon it


class CancelOutcome(str, enum.Enum):
    CANCELED = "canceled"  # was queued (or already canceled)
    CANCEL_REQUESTED = "cancel_requested"  # running: its worker stops at the next step
    MISSING = "missing"
    SUCCEEDED = "succeeded"  # too late: already finished
    FAILED = "failed"


class RequeueOutcome(str, enum.Enum):
    REQUEUED = "requeued"  # back to queued with a new broker message
    CANCELED = "canceled"  # its cancel had been requested: ended canceled instead
    HELD = "held"  # left alone: a live lease, another attempt holds it, or no longer running


@dataclass
class JobRecord:
    """A job as stored, parsed into Python types."""

    id: str
    status: JobStatus
    model: str
    input: dict[str, Any]
    seq: int
    created_at: float
    tenant: str = ""
    api_key: str = ""  # prefix of the key that created it
    priority: str = "normal"
    retry_of: str | None = None
    retried_by: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    progress_step: int = 0
    progress_total: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    attempts: int = 0
    worker: str | None = None
    metadata: dict[str, Any] | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    generation_seconds: float | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    replicate: dict[str, str] | None = None  # created through the Replicate routes: how it is addressed

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> JobRecord:
        def opt_float(name: str) -> float | None:
            value = raw.get(name)
            return float(value) if value not in (None, "") else None

        def opt_json(name: str) -> Any:
            value = raw.get(name)
            return json.loads(value) if value not in (None, "") else None

        return cls(
            id=raw["id"],
            status=JobStatus(raw["status"]),
            model=raw["model"],
            input=json.loads(raw["input"]),
            seq=int(raw.get("seq", "0")),
            created_at=float(raw["created_at"]),
            tenant=raw.get("tenant", ""),
            api_key=raw.get("key", ""),
            priority=raw.get("priority") or "normal",
            retry_of=raw.get("retry_of") or None,
            retried_by=raw.get("retried_by") or None,
            started_at=opt_float("started_at"),
            completed_at=opt_float("completed_at"),
            progress_step=int(raw.get("progress_step") or 0),
            progress_total=int(raw.get("progress_total") or 0),
            outputs=opt_json("outputs") or [],
            error=opt_json("error"),
            attempts=int(raw.get("attempts") or 0),
            worker=raw.get("worker") or None,
            metadata=opt_json("metadata"),
            webhook=raw.get("webhook") or None,
            webhook_events_filter=opt_json("webhook_events_filter"),
            generation_seconds=opt_float("generation_seconds"),
            lease_until=opt_float("lease_until"),
            cancel_requested=raw.get("cancel_requested") == "1",
            replicate=opt_json("replicate"),
        )


@dataclass(frozen=True)
class CreateResult:
    outcome: CreateOutcome
    job_id: str = ""
    request_hash: str = ""  # EXISTS: the stored request's hash (differs from ours on a key reused)
    record: JobRecord | None = None  # CREATED: the job as written (no read-back needed)
    queue_position: int | None = None
    retry_after_s: float = 0.0  # refused: when trying again may succeed
    tokens: float | None = None  # the key's rate-limit tokens left (None: no rate limit)
    active: int | None = None  # the key's jobs queued or running, with this one

    @property
    def created(self) -> bool:
        return self.outcome is CreateOutcome.CREATED


PRIORITY_BANDS = {"high": 0, "normal": 1, "low": 2}  # lower runs first (the pending score's band)


@dataclass(frozen=True)
class NewJob:
    """One job to create: plain data (``jobs/admission.py`` makes them from requests)."""

    id: str
    input: dict[str, Any]
    priority: str = "normal"
    batch_class: str = ""  # jobs of one class can share a static batch ('' = the model does not batch)
    metadata: dict[str, Any] | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    extra: dict[str, str] = field(default_factory=dict)  # more job fields (e.g. retry_of)


@dataclass(frozen=True)
class Picked:
    """What ``JobStore.pick`` took: job ids to start (empty: nothing to do), and how many are
    still pending behind them."""

    ids: list[str]
    pending: int


@dataclass(frozen=True)
class StartResult:
    status: ClaimOutcome
    attempt: int
    input: dict[str, Any] | None = None

    @property
    def started(self) -> bool:
        return self.status is ClaimOutcome.STARTED


@dataclass(frozen=True)
class Page:
    jobs: list[JobRecord]
    next_cursor: str | None


class JobStore:
    """Every read and transition of a job, and the scheduler's "which job next". Transitions are
    Lua scripts: one atomic step each."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys | None = None,
        *,
        retention_s: int = 7 * 86_400,
        progress_event_interval_s: float = 0.5,
        backpressure: Backpressure | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.retention_s = retention_s
        self.progress_event_interval_s = progress_event_interval_s
        self.backpressure = backpressure or Backpressure()
        self._scripts = {script.name: BoundScript(client, script) for script in scripts.STORE_SCRIPTS}

    def _outbox(self, job_id: str) -> dict[str, str]:
        return _pick(self.keys.outbox(job_id), scripts.OUTBOX)

    def _indexes(self, status: JobStatus, name: str | None = None) -> dict[str, str]:
        """The two indexes of ``status`` (by creation order, and by tenant), named for a script:
        ``{name: …, name_by_tenant: …}`` (``name`` defaults to the status)."""
        name = name or status.value
        return {name: self.keys.jobs_by_status(status.value), f"{name}_by_tenant": self.keys.by_tenant(status.value)}

    def _channels(self) -> dict[str, str]:
        return {"events_channel": self.keys.events_channel()}

    # -- creation -------------------------------------------------------------------
    def create(
        self,
        job_id: str,
        model: str,
        job_input: dict[str, Any],
        *,
        owner: Owner,
        limits: Limits = Limits(),
        priority: str = "normal",
        batch_class: str = "",
        metadata: dict[str, Any] | None = None,
        webhook: str | None = None,
        webhook_events_filter: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        request_hash: str = "",
        idempotency_ttl_s: int = 86_400,
        extra: dict[str, str] | None = None,
        now: float | None = None,
    ) -> CreateResult:
        """A new queued job in the scheduler, in one atomic step, if the model has room and the
        owner's key its quota and rate (checked in the same step: no race lets a burst through,
        and a refused request writes nothing).

        Returns:
            ``CreateResult`` with ``outcome``: ``CREATED`` (with the record and its queue
            position), ``EXISTS`` (with the id and request hash an earlier request with the
            same ``idempotency_key`` stored: the caller compares the hashes), or a refusal —
            ``BACKLOG``, ``NO_WORKER``, ``QUOTA``, ``RATE`` — with ``retry_after_s``.
        """
        job = NewJob(
            job_id,
            job_input,
            priority=priority,
            batch_class=batch_class,
            metadata=metadata,
            webhook=webhook,
            webhook_events_filter=list(webhook_events_filter) if webhook_events_filter is not None else None,
            extra=extra or {},
        )
        idempotency = self.keys.idempotency(owner.tenant, idempotency_key) if idempotency_key else ""
        return self._create(model, [job], owner, limits, idempotency, request_hash, idempotency_ttl_s, now)[0]

    def create_many(
        self, model: str, jobs: list[NewJob], *, owner: Owner, limits: Limits = Limits(), now: float | None = None
    ) -> list[CreateResult]:
        """Several new jobs of one model in one atomic step (a batch submit); each is created or
        refused (rate, quota, backlog) as it would have been alone, in order. No idempotency."""
        return self._create(model, jobs, owner, limits, "", "", 0, now)

    def _create(
        self,
        model: str,
        jobs: list[NewJob],
        owner: Owner,
        limits: Limits,
        idempotency: str,
        request_hash: str,
        idempotency_ttl_s: int,
        now: float | None,
    ) -> list[CreateResult]:
        created_at = now if now is not None else time.time()
        records = [_job_fields(job, model, owner, created_at) for job in jobs]
        k = self.keys
        keys = {
            "jobs": k.jobs(),
            "by_tenant": k.by_tenant(),
            **self._indexes(JobStatus.QUEUED),
            "idempotency": idempotency,
            "seq": k.seq(),
            "rate_limits": k.rate_limits(),
            "active": k.active(),
            "model": k.model(model),
            "model_workers": k.model_workers(model),
            "models": k.models(),
            "weights": k.weights(),
            **k.scheduling(model),
        }
        bp = self.backpressure
        args = {
            "tenant": owner.tenant,
            "key": owner.key,
            "model_name": model,
            "request_hash": request_hash,
            "idempotency_ttl_s": idempotency_ttl_s,
            "token": work_message(model),
            "tokens_max": TOKENS,
            "now": created_at,
            "rate_per_s": float(limits.rate_per_s),
            "burst": limits.burst,
            "max_active": limits.max_active,
            "max_backlog": bp.max_backlog,
            "max_wait_s": float(bp.max_wait_s),
            "worker_stale_s": float(bp.worker_stale_s),
            "no_worker_s": float(bp.no_worker_s),
        }
        varargs: list[object] = []
        for job, fields in zip(jobs, records, strict=True):
            varargs += [job.id, PRIORITY_BANDS[job.priority], job.batch_class, _dumps(fields)]
        reply = self._scripts["create"](keys, args, varargs, varkeys=[k.job(job.id) for job in jobs])
        if as_text(reply[0]) == "exists":
            existing_id, _, existing_hash = as_text(reply[1]).partition(" ")
            return [CreateResult(CreateOutcome.EXISTS, existing_id, existing_hash)]
        tokens = float(as_text(reply[0]))
        active = int(as_text(reply[1])) if owner.key else None
        results = []
        for job, fields, item in zip(jobs, records, reply[2:], strict=True):
            outcome = CreateOutcome(as_text(item[0]))
            if outcome is CreateOutcome.CREATED:
                record = JobRecord.from_hash({**fields, "seq": as_text(item[1])})
                result = CreateResult(outcome, job.id, request_hash, record, int(item[2]), tokens=None, active=active)
                log_transition(
                    "created",
                    job.id,
                    model,
                    tenant=owner.tenant,
                    key=owner.key,
                    priority=job.priority,
                    position=item[2],
                )
            else:
                result = CreateResult(outcome, retry_after_s=float(as_text(item[1])))
            results.append(replace(result, tokens=tokens if tokens >= 0 else None))
        return results

    # -- reads ----------------------------------------------------------------------
    def get(self, job_id: str, *, tenant: str) -> JobRecord | None:
        """The job, or None when there is no such job (never created, past retention) or it
        belongs to another tenant than ``tenant`` (``ANY_TENANT``: any) — the same answer."""
        flat = self._scripts["read"]({"job": self.keys.job(job_id)}, {"tenant": tenant})
        if not flat:
            return None
        return JobRecord.from_hash({as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat), 2)})

    def get_with_position(self, job_id: str, *, tenant: str) -> tuple[JobRecord | None, int | None]:
        """The job (as ``get``) and, when queued, how many jobs the scheduler will start before
        it (its rank in the model's pending order; 0 once a worker picked it).

        One round trip for a job that is not queued, two for a queued one (its position is
        read by a script that re-checks the status, so "queued" never comes without one).
        """
        while True:
            record = self.get(job_id, tenant=tenant)
            if record is None or record.status is not JobStatus.QUEUED:
                return record, None
            keys = {"job": self.keys.job(job_id), "pending": self.keys.pending(record.model)}
            rank = self._scripts["position"](keys, {"id": job_id})
            if rank is not None:
                return record, int(rank)
            # it left the queue between the two reads: read it again

    def queue_depth(self, model: str) -> int:
        """How many jobs of ``model`` wait to be picked."""
        return int(self.redis.zcard(self.keys.pending(model)))

    def ids_with_status(self, status: JobStatus, limit: int = 1000) -> list[str]:
        """Up to ``limit`` ids of jobs in ``status``, oldest first (every tenant's)."""
        ids: Any = self.redis.zrange(self.keys.jobs_by_status(status.value), 0, limit - 1)
        return [as_text(i) for i in ids]

    def page(
        self,
        *,
        tenant: str,
        status: JobStatus | None = None,
        limit: int = 20,
        cursor: int | None = None,
        where: Callable[[JobRecord], bool] | None = None,
        scan_limit: int = 1000,
    ) -> Page:
        """``tenant``'s jobs (``ANY_TENANT``: everyone's), newest first; ``cursor`` is the
        sequence number of the last job already seen. ``where`` filters (e.g. by error type),
        reading at most ``scan_limit`` jobs for one page: a page may then come back short, with
        a cursor to go on from."""
        matches: list[JobRecord] = []
        scanned, exhausted = 0, False
        while len(matches) <= limit and scanned < scan_limit:
            members = self._members(tenant, status, limit + 1, cursor)
            for record, seq in self._load(members):
                cursor, scanned = seq, scanned + 1
                if record is not None and (where is None or where(record)):
                    matches.append(record)
                    if len(matches) > limit:
                        break
            if len(members) <= limit:
                exhausted = True
                break
        if len(matches) > limit:
            return Page(matches[:limit], str(matches[limit - 1].seq))
        return Page(matches, None if exhausted or cursor is None else str(cursor))

    def _members(self, tenant: str, status: JobStatus | None, count: int, cursor: int | None) -> list[tuple[str, str]]:
        """(index, member) of up to ``count`` jobs below ``cursor``, newest first."""
        status_name = status.value if status else None
        if tenant == ANY_TENANT:
            index = self.keys.jobs_by_status(status_name) if status_name else self.keys.jobs()
            upper = f"({cursor}" if cursor is not None else "+inf"
            raw: Any = self.redis.zrevrangebyscore(index, upper, "-inf", start=0, num=count)
        else:
            index = self.keys.by_tenant(status_name)
            upper = f"({tenant}|{cursor:016d}" if cursor is not None else f"({tenant}}}"
            raw = self.redis.zrevrangebylex(index, upper, f"[{tenant}|", start=0, num=count)
        return [(index, as_text(m)) for m in raw]

    def _load(self, members: list[tuple[str, str]]) -> list[tuple[JobRecord | None, int]]:
        """The jobs behind index members, with their sequence numbers; a job past its retention
        is None (and leaves the index)."""
        ids = [member.split("|")[2] if "|" in member else member for _, member in members]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.keys.job(job_id))
        loaded: list[tuple[JobRecord | None, int]] = []
        for (index, member), raw in zip(members, pipe.execute(), strict=True):
            if raw:
                record = JobRecord.from_hash({as_text(a): as_text(b) for a, b in raw.items()})
                loaded.append((record, record.seq))
            else:
                seq = int(member.split("|")[1]) if "|" in member else int(self.redis.zscore(index, member) or 0)
                self.redis.zrem(index, member)
                loaded.append((None, seq))
        return loaded

    # -- scheduling -----------------------------------------------------------------
    def pick(self, model: str, *, batch_max: int = 1, batch_class: str = "", pick_timeout_s: float = 30.0) -> Picked:
        """Which job next: the head of ``model``'s pending jobs — highest band, then fair share
        between tenants — plus, when ``batch_max`` > 1, up to ``batch_max`` - 1 pending jobs of
        its batch class (or, with ``batch_class``, up to ``batch_max`` of that class only).

        Returns:
            ``Picked`` with the ids to ``start`` (none: nothing pending, or the model is
            paused) and the number still pending. A picked job not started within
            ``pick_timeout_s`` goes back to its place (``restore_picked``).
        """
        now = time.time()
        args = {
            "now": now,
            "deadline": now + pick_timeout_s,
            "batch_max": batch_max,
            "class": batch_class,
            "token": work_message(model),
        }
        reply = self._scripts["pick"]({"model": self.keys.model(model), **self.keys.scheduling(model)}, args)
        return Picked([as_text(i) for i in reply[1:]], int(reply[0]))

    def restore_picked(self, model: str, now: float | None = None) -> list[str]:
        """Jobs picked more than their timeout ago and never started (their worker died in
        between) go back to their place; returns their ids."""
        now = time.time() if now is None else now
        stale = [as_text(i) for i in self.redis.zrangebyscore(self.keys.picked(model), "-inf", now)]  # type: ignore
        restored = []
        for job_id in stale:
            keys = {"job": self.keys.job(job_id), **self.keys.scheduling(model)}
            if int(self._scripts["restore"](keys, {"now": now, "token": work_message(model)})):
                restored.append(job_id)
        return restored

    def promote_aged(self, model: str, aging_s: float, now: float | None = None) -> list[str]:
        """Pending jobs that waited ``aging_s`` in their band move up one, to its front (no
        starvation of ``low``); returns their ids."""
        now = time.time() if now is None else now
        aged = [as_text(i) for i in self.redis.zrangebyscore(self.keys.aging(model), "-inf", now - aging_s)]  # type: ignore
        promoted = []
        for job_id in aged:
            keys = {"job": self.keys.job(job_id), **self.keys.scheduling(model)}
            if int(self._scripts["promote"](keys, {"now": now})):
                promoted.append(job_id)
        return promoted

    def await_token(self, model: str, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for a wake-up token on ``model``'s queue and take it (True),
        without a Celery round: a draining worker that ran out of jobs keeps listening a while,
        so the next job of a sequence starts at once. A token taken by a worker that then dies
        is restored by the reconciler, like one lost in Celery."""
        return self.redis.brpop([self.keys.scheduling(model)["broker"]], timeout=timeout_s) is not None

    def wake(self, model: str) -> bool:
        """A token in ``model``'s queue if jobs are pending and none waits (False: paused)."""
        keys = {"model": self.keys.model(model), **self.keys.scheduling(model)}
        return int(self._scripts["wake"](keys, {"token": work_message(model)})) == 1

    def models_with_jobs(self) -> list[str]:
        return sorted(as_text(m) for m in self.redis.smembers(self.keys.models()))  # type: ignore[union-attr]

    def set_paused(self, model: str, paused: bool) -> None:
        """Pause (workers pick nothing; queued jobs stay queued, running ones finish) or resume."""
        if paused:
            self.redis.hset(self.keys.model(model), "paused", "1")
        else:
            self.redis.hdel(self.keys.model(model), "paused")
            self.wake(model)

    def paused(self, model: str) -> bool:
        return self.redis.hget(self.keys.model(model), "paused") == b"1"

    def set_weight(self, tenant: str, weight: float) -> None:
        """A tenant's fair-share weight (default 1): its share within a band, relative to others."""
        self.redis.hset(self.keys.weights(), tenant, repr(float(weight)))

    # -- transitions ----------------------------------------------------------------
    def start(self, job_id: str, model: str, worker: str, *, lease_s: float, max_attempts: int = 3) -> StartResult:
        """A picked queued job → running for ``worker``: attempt + 1, a lease of ``lease_s``.

        Returns:
            ``StartResult`` whose ``status`` is ``ClaimOutcome.STARTED`` (with the attempt and
            the job's input), ``MAX_ATTEMPTS`` (the job had used them all: it is now failed),
            ``MISSING``, or the status the job already had (``CANCELED`` while picked, …).
        """
        now = time.time()
        keys = {
            "job": self.keys.job(job_id),
            **self._indexes(JobStatus.QUEUED),
            **self._indexes(JobStatus.RUNNING),
            **self._indexes(JobStatus.FAILED),
            "active": self.keys.active(),
            "stats": self.keys.stats(model),
            **self.keys.scheduling(model),
            **self._outbox(job_id),
        }
        args = {
            "worker": worker,
            "now": now,
            "lease_until": now + lease_s,
            "max_attempts": max_attempts,
            "retention_s": self.retention_s,
            **self._channels(),
        }
        reply = self._scripts["start"](keys, args)
        outcome = ClaimOutcome(as_text(reply[0]))
        if outcome is ClaimOutcome.STARTED:
            tenant, waited = as_text(reply[3]), float(as_text(reply[4]))
            log_transition(
                "started", job_id, model, worker=worker, tenant=tenant, attempt=int(reply[1]), queue_s=waited
            )
        elif outcome is ClaimOutcome.MAX_ATTEMPTS:
            log_transition("failed", job_id, model, worker=worker, error="max_attempts", attempts=int(reply[1]))
        job_input = json.loads(as_text(reply[2])) if len(reply) > 2 else None
        return StartResult(outcome, int(reply[1]), job_input)

    def progress(self, job_id: str, attempt: int, step: int, *, lease_s: float) -> ProgressAnswer:
        """Record a denoising step and renew the lease.

        Returns:
            ``ProgressAnswer.OK``; ``CANCEL`` when a cancel was requested (stop now); ``LOST``
            when this attempt no longer holds the job (abandon it: another attempt owns it).
        """
        now = time.time()
        args = {
            "attempt": attempt,
            "step": step,
            "lease_until": now + lease_s,
            "now": now,
            "event_interval_s": self.progress_event_interval_s,
            **self._channels(),
        }
        keys = {"job": self.keys.job(job_id), **self._outbox(job_id)}
        return ProgressAnswer(as_text(self._scripts["progress"](keys, args)))

    def renew(self, job_id: str, attempt: int, *, lease_s: float) -> bool:
        """Extend the lease; False when ``attempt`` no longer holds the job."""
        args = {"attempt": attempt, "lease_until": time.time() + lease_s}
        return int(self._scripts["renew"]({"job": self.keys.job(job_id)}, args)) == 1

    def succeed(
        self,
        job_id: str,
        model: str,
        attempt: int,
        outputs: list[dict[str, Any]],
        *,
        generation_seconds: float,
        storage_seconds: float | None = None,
    ) -> bool:
        """running → succeeded with ``outputs``, only for the attempt that holds the job; its
        generation time joins the model's moving average (wait estimates, ETAs), and both times
        the model's histograms (``storage_seconds``: encode and upload)."""
        return self._transition(
            job_id,
            model,
            attempt,
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            Timings(generation_seconds, storage_seconds),
            outputs=_dumps(outputs),
            generation_seconds=repr(generation_seconds),
        )

    def fail(self, job_id: str, model: str, attempt: int | None, error_type: str, message: str) -> bool:
        """running → failed (``attempt=None``: whichever attempt runs it, e.g. a timeout)."""
        error = _dumps({"type": error_type, "message": message[:2000]})
        timings = Timings(error_type=error_type)
        return self._transition(job_id, model, attempt, JobStatus.RUNNING, JobStatus.FAILED, timings, error=error)

    def fail_queued(self, job_id: str, model: str, error_type: str, message: str) -> bool:
        """queued → failed (e.g. it waited longer than its TTL)."""
        error = _dumps({"type": error_type, "message": message[:2000]})
        timings = Timings(error_type=error_type)
        return self._transition(job_id, model, None, JobStatus.QUEUED, JobStatus.FAILED, timings, error=error)

    def cancel_running(self, job_id: str, model: str, attempt: int) -> bool:
        """running → canceled by the attempt that stopped at a cancel request."""
        return self._transition(job_id, model, attempt, JobStatus.RUNNING, JobStatus.CANCELED)

    def cancel(self, job_id: str, model: str, *, tenant: str) -> CancelOutcome:
        """Cancel a job of ``tenant`` (``ANY_TENANT``: any).

        Returns:
            ``CancelOutcome.CANCELED`` (it was queued, now canceled, or was canceled already);
            ``CANCEL_REQUESTED`` (running: its worker stops at the next step); ``MISSING`` (no
            such job, or another tenant's); ``SUCCEEDED`` / ``FAILED`` (finished: nothing to cancel).
        """
        keys = {
            "job": self.keys.job(job_id),
            **self._indexes(JobStatus.QUEUED),
            **self._indexes(JobStatus.CANCELED),
            "active": self.keys.active(),
            "stats": self.keys.stats(model),
            **self.keys.scheduling(model),
            **self._outbox(job_id),
        }
        args = {
            "tenant": tenant,
            "now": time.time(),
            "retention_s": self.retention_s,
            "cancel_channel": self.keys.cancel_channel(),
            **self._channels(),
        }
        outcome = CancelOutcome(as_text(self._scripts["cancel"](keys, args)))
        if outcome in (CancelOutcome.CANCELED, CancelOutcome.CANCEL_REQUESTED):
            log_transition(outcome.value, job_id, model, tenant=None if tenant == ANY_TENANT else tenant)
        return outcome

    def link_retry(self, original_id: str, retry_id: str) -> None:
        """Record on the original job which job retried it (the retry records ``retry_of``)."""
        self.redis.hset(self.keys.job(original_id), "retried_by", retry_id)

    def requeue_if_lease_expired(self, job_id: str, model: str, now: float | None = None) -> RequeueOutcome:
        """A running job whose lease expired goes back to its place in the scheduler (the
        reconciler: its worker died or hung). Its next start counts another attempt.

        Returns:
            ``RequeueOutcome.REQUEUED``; ``CANCELED`` (its cancel had been requested, so it
            ends canceled instead); ``HELD`` (the lease is live, or it is no longer running).
        """
        return self._requeue_job(job_id, model, None, time.time() if now is None else now)

    def give_back(self, job_id: str, model: str, attempt: int) -> RequeueOutcome:
        """The attempt holding a running job gives it back to the scheduler (its worker stalled
        and is about to exit), at once rather than when the lease runs out.

        Returns:
            ``RequeueOutcome.REQUEUED``, ``CANCELED`` (a cancel was pending) or ``HELD`` (this
            attempt no longer holds it).
        """
        return self._requeue_job(job_id, model, attempt, time.time())

    def _requeue_job(self, job_id: str, model: str, attempt: int | None, now: float) -> RequeueOutcome:
        keys = {
            "job": self.keys.job(job_id),
            **self._indexes(JobStatus.RUNNING),
            **self._indexes(JobStatus.QUEUED),
            **self._indexes(JobStatus.CANCELED),
            "active": self.keys.active(),
            "stats": self.keys.stats(model),
            **self.keys.scheduling(model),
            **self._outbox(job_id),
        }
        args = {
            "now": now,
            "retention_s": self.retention_s,
            "token": work_message(model),
            "attempt": "" if attempt is None else attempt,
            **self._channels(),
        }
        outcome = RequeueOutcome(as_text(self._scripts["requeue"](keys, args)))
        if outcome is not RequeueOutcome.HELD:
            reason = "lease expired" if attempt is None else "given back"
            log_transition(outcome.value, job_id, model, attempt=attempt, reason=reason)
        return outcome

    def _transition(
        self,
        job_id: str,
        model: str,
        attempt: int | None,
        source: JobStatus,
        target: JobStatus,
        timings: Timings | None = None,
        **values: str,
    ) -> bool:
        """``source`` → ``target`` with ``values``; False when the job was not in ``source`` (or
        ``attempt`` no longer holds it)."""
        keys = {
            "job": self.keys.job(job_id),
            **self._indexes(source, "from_index"),
            **self._indexes(target, "to_index"),
            "active": self.keys.active(),
            "model": self.keys.model(model),
            "stats": self.keys.stats(model),
            **self.keys.scheduling(model),
            **self._outbox(job_id),
        }
        timings = timings or Timings()
        args = {
            "attempt": "" if attempt is None else attempt,
            "source": source.value,
            "target": target.value,
            "now": time.time(),
            "retention_s": self.retention_s,
            "generation_s": _optional(timings.generation_s),
            "storage_s": _optional(timings.storage_s),
            "outcome": job_outcome(target.value, timings.error_type),
            **self._channels(),
        }
        varargs = [item for pair in values.items() for item in pair]
        reply = self._scripts["finish"](keys, args, varargs)
        if not isinstance(reply, list):
            return False
        tenant, worker, created, started = (as_text(part) for part in reply[1:5])
        now = float(args["now"])
        log_transition(
            target.value,
            job_id,
            model,
            worker=worker,
            tenant=tenant,
            error=timings.error_type,
            generation_s=timings.generation_s,
            storage_s=timings.storage_s,
            run_s=now - float(started) if started else None,
            total_s=now - float(created) if created else None,
        )
        return True


@dataclass(frozen=True)
class Timings:
    """What a terminal transition counts besides its state: phase times and the error type."""

    generation_s: float | None = None
    storage_s: float | None = None
    error_type: str = ""


def _optional(seconds: float | None) -> str | float:
    return "" if seconds is None else float(seconds)


def _job_fields(job: NewJob, model: str, owner: Owner, created_at: float) -> dict[str, str]:
    """The hash fields of a new job (the create script adds seq, band and its scheduling)."""
    fields: dict[str, str] = {
        "id": job.id,
        "status": JobStatus.QUEUED.value,
        "model": model,
        "tenant": owner.tenant,
        "key": owner.key,
        "priority": job.priority,
        "input": _dumps(job.input),
        "created_at": repr(created_at),
        "progress_step": "0",
        "progress_total": str(job.input.get("num_inference_steps", 0)),
        "attempts": "0",
        **job.extra,
    }
    if job.metadata is not None:
        fields["metadata"] = _dumps(job.metadata)
    if job.webhook:
        fields["webhook"] = job.webhook
    if job.webhook_events_filter is not None:
        fields["webhook_events_filter"] = _dumps(job.webhook_events_filter)
    return fields


def _pick(mapping: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    return {name: mapping[name] for name in names}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
