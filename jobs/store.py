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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from jobs import scripts
from jobs.connections import as_text
from jobs.keys import Keys, celery_queue
from jobs.lua import BoundScript
from jobs.models import JobStatus
from jobs.transport import task_message

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
    """Every read and transition of a job. Transitions are Lua scripts: one atomic step each."""

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
        self._create = BoundScript(client, scripts.CREATE)
        self._read = BoundScript(client, scripts.READ)
        self._start = BoundScript(client, scripts.START)
        self._progress = BoundScript(client, scripts.PROGRESS)
        self._position = BoundScript(client, scripts.POSITION)
        self._renew = BoundScript(client, scripts.RENEW)
        self._finish = BoundScript(client, scripts.FINISH)
        self._cancel = BoundScript(client, scripts.CANCEL)
        self._requeue = BoundScript(client, scripts.REQUEUE)

    def _outbox(self, job_id: str) -> dict[str, str]:
        return _pick(self.keys.outbox(job_id), scripts.OUTBOX)

    def _indexes(self, status: JobStatus, name: str | None = None) -> dict[str, str]:
        """The two indexes of ``status`` (by creation order, and by tenant), named for a script:
        ``{name: …, name_by_tenant: …}`` (``name`` defaults to the status)."""
        name = name or status.value
        return {name: self.keys.jobs_by_status(status.value), f"{name}_by_tenant": self.keys.by_tenant(status.value)}

    # -- creation -------------------------------------------------------------------
    def create(
        self,
        job_id: str,
        model: str,
        job_input: dict[str, Any],
        *,
        owner: Owner,
        limits: Limits = Limits(),
        metadata: dict[str, Any] | None = None,
        webhook: str | None = None,
        webhook_events_filter: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        request_hash: str = "",
        idempotency_ttl_s: int = 86_400,
        extra: dict[str, str] | None = None,
        now: float | None = None,
    ) -> CreateResult:
        """A new queued job and its broker message, in one atomic step (no orphan either way),
        if the model has room and the owner's key its quota and rate (checked in the same step:
        no race lets a burst through, and a refused request writes nothing).

        Returns:
            ``CreateResult`` with ``outcome``: ``CREATED`` (with the record and its queue
            position), ``EXISTS`` (with the id and request hash an earlier request with the
            same ``idempotency_key`` stored: the caller compares the hashes), or a refusal —
            ``BACKLOG``, ``NO_WORKER``, ``QUOTA``, ``RATE`` — with ``retry_after_s``.
        """
        created_at = now if now is not None else time.time()
        fields: dict[str, str] = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "model": model,
            "tenant": owner.tenant,
            "key": owner.key,
            "input": _dumps(job_input),
            "created_at": repr(created_at),
            "progress_step": "0",
            "progress_total": str(job_input.get("num_inference_steps", 0)),
            "attempts": "0",
            **(extra or {}),
        }
        if metadata is not None:
            fields["metadata"] = _dumps(metadata)
        if webhook:
            fields["webhook"] = webhook
        if webhook_events_filter is not None:
            fields["webhook_events_filter"] = _dumps(list(webhook_events_filter))
        k = self.keys
        keys = {
            "job": k.job(job_id),
            "jobs": k.jobs(),
            "by_tenant": k.by_tenant(),
            **self._indexes(JobStatus.QUEUED),
            "queue": k.queue(model),
            "broker": celery_queue(model),
            "idempotency": k.idempotency(owner.tenant, idempotency_key) if idempotency_key else "",
            "seq": k.seq(),
            "rate_limits": k.rate_limits(),
            "active": k.active(),
            "model": k.model(model),
            "model_workers": k.model_workers(model),
        }
        bp = self.backpressure
        args = {
            "id": job_id,
            "tenant": owner.tenant,
            "key": owner.key,
            "request_hash": request_hash,
            "idempotency_ttl_s": idempotency_ttl_s,
            "broker_message": task_message(job_id, model),
            "now": created_at,
            "rate_per_s": float(limits.rate_per_s),
            "burst": limits.burst,
            "max_active": limits.max_active,
            "max_backlog": bp.max_backlog,
            "max_wait_s": float(bp.max_wait_s),
            "worker_stale_s": float(bp.worker_stale_s),
            "no_worker_s": float(bp.no_worker_s),
        }
        reply = self._create(keys, args, [item for pair in fields.items() for item in pair])
        outcome = CreateOutcome(as_text(reply[0]))
        if outcome is CreateOutcome.CREATED:
            record = JobRecord.from_hash({**fields, "seq": as_text(reply[1])})
            tokens = float(as_text(reply[3]))
            return CreateResult(
                outcome,
                job_id,
                request_hash,
                record,
                int(reply[2]),
                tokens=tokens if tokens >= 0 else None,
                active=int(as_text(reply[4])) if owner.key else None,
            )
        if outcome is CreateOutcome.EXISTS:
            existing_id, _, existing_hash = as_text(reply[1]).partition(" ")
            return CreateResult(outcome, existing_id, existing_hash)
        return CreateResult(outcome, retry_after_s=float(as_text(reply[1])), tokens=float(as_text(reply[2])))

    # -- reads ----------------------------------------------------------------------
    def get(self, job_id: str, *, tenant: str) -> JobRecord | None:
        """The job, or None when there is no such job (never created, past retention) or it
        belongs to another tenant than ``tenant`` (``ANY_TENANT``: any) — the same answer."""
        flat = self._read({"job": self.keys.job(job_id)}, {"tenant": tenant})
        if not flat:
            return None
        return JobRecord.from_hash({as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat), 2)})

    def get_with_position(self, job_id: str, *, tenant: str) -> tuple[JobRecord | None, int | None]:
        """The job (as ``get``) and, when queued, how many queued jobs of its model are ahead.

        One round trip for a job that is not queued, two for a queued one (its position is
        read by a script that re-checks the status, so "queued" never comes without one).
        """
        while True:
            record = self.get(job_id, tenant=tenant)
            if record is None or record.status is not JobStatus.QUEUED:
                return record, None
            keys = {"job": self.keys.job(job_id), "queue": self.keys.queue(record.model)}
            rank = self._position(keys, {"id": job_id})
            if rank is not None:
                return record, int(rank)
            # it left the queue between the two reads: read it again

    def queued_messages(self, model: str) -> int:
        """Messages waiting in the model's broker list (what a worker would take next)."""
        return int(self.redis.llen(celery_queue(model)))

    def queue_depth(self, model: str) -> int:
        """How many jobs of ``model`` are queued."""
        return int(self.redis.zcard(self.keys.queue(model)))

    def ids_with_status(self, status: JobStatus, limit: int = 1000) -> list[str]:
        """Up to ``limit`` ids of jobs in ``status``, oldest first (every tenant's)."""
        ids: Any = self.redis.zrange(self.keys.jobs_by_status(status.value), 0, limit - 1)
        return [as_text(i) for i in ids]

    def page(self, *, tenant: str, status: JobStatus | None = None, limit: int = 20, cursor: int | None = None) -> Page:
        """``tenant``'s jobs (``ANY_TENANT``: everyone's), newest first; ``cursor`` is the
        sequence number of the last job already seen."""
        status_name = status.value if status else None
        if tenant == ANY_TENANT:
            index = self.keys.jobs_by_status(status_name) if status_name else self.keys.jobs()
            upper = f"({cursor}" if cursor is not None else "+inf"
            raw = self.redis.zrevrangebyscore(index, upper, "-inf", start=0, num=limit + 1)
            members = [(as_text(i), as_text(i)) for i in raw]  # type: ignore[union-attr]
        else:
            index = self.keys.by_tenant(status_name)
            upper = f"({tenant}|{cursor:016d}" if cursor is not None else f"({tenant}}}"
            raw = self.redis.zrevrangebylex(index, upper, f"[{tenant}|", start=0, num=limit + 1)
            members = [(as_text(m), as_text(m).rsplit("|", 1)[1]) for m in raw]  # type: ignore[union-attr]
        pipe = self.redis.pipeline(transaction=False)
        for _, job_id in members[:limit]:
            pipe.hgetall(self.keys.job(job_id))
        records = []
        for (member, _), hash_ in zip(members, pipe.execute(), strict=False):
            if hash_:
                records.append(JobRecord.from_hash({as_text(a): as_text(b) for a, b in hash_.items()}))
            else:  # expired by retention: drop it from the index lazily
                self.redis.zrem(index, member)
        more = len(members) > limit
        next_cursor = str(records[-1].seq) if more and records else None
        return Page(records, next_cursor)

    # -- transitions ----------------------------------------------------------------
    def start(self, job_id: str, model: str, worker: str, *, lease_s: float, max_attempts: int = 3) -> StartResult:
        """queued → running for ``worker``: attempt + 1, a lease of ``lease_s``.

        Returns:
            ``StartResult`` whose ``status`` is ``ClaimOutcome.STARTED`` (with the attempt and
            the job's input), ``MAX_ATTEMPTS`` (the job had used them all: it is now failed),
            ``MISSING``, or the status the job already had (``RUNNING``, ``SUCCEEDED``, …):
            a duplicate or stale message, to acknowledge and skip.
        """
        now = time.time()
        keys = {
            "job": self.keys.job(job_id),
            **self._indexes(JobStatus.QUEUED),
            **self._indexes(JobStatus.RUNNING),
            **self._indexes(JobStatus.FAILED),
            "queue": self.keys.queue(model),
            "active": self.keys.active(),
            **self._outbox(job_id),
        }
        args = {
            "worker": worker,
            "now": now,
            "lease_until": now + lease_s,
            "max_attempts": max_attempts,
            "retention_s": self.retention_s,
        }
        reply = self._start(keys, args)
        job_input = json.loads(as_text(reply[2])) if len(reply) > 2 else None
        return StartResult(ClaimOutcome(as_text(reply[0])), int(reply[1]), job_input)

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
        }
        keys = {"job": self.keys.job(job_id), **self._outbox(job_id)}
        return ProgressAnswer(as_text(self._progress(keys, args)))

    def renew(self, job_id: str, attempt: int, *, lease_s: float) -> bool:
        """Extend the lease; False when ``attempt`` no longer holds the job."""
        args = {"attempt": attempt, "lease_until": time.time() + lease_s}
        return int(self._renew({"job": self.keys.job(job_id)}, args)) == 1

    def succeed(
        self, job_id: str, model: str, attempt: int, outputs: list[dict[str, Any]], *, generation_seconds: float
    ) -> bool:
        """running → succeeded with ``outputs``, only for the attempt that holds the job; its
        generation time joins the model's moving average (wait estimates, ETAs)."""
        return self._transition(
            job_id,
            model,
            attempt,
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            generation_s=generation_seconds,
            outputs=_dumps(outputs),
            generation_seconds=repr(generation_seconds),
        )

    def fail(self, job_id: str, model: str, attempt: int | None, error_type: str, message: str) -> bool:
        """running → failed (``attempt=None``: whichever attempt runs it, e.g. a timeout)."""
        error = _dumps({"type": error_type, "message": message[:2000]})
        return self._transition(job_id, model, attempt, JobStatus.RUNNING, JobStatus.FAILED, error=error)

    def fail_queued(self, job_id: str, model: str, error_type: str, message: str) -> bool:
        """queued → failed (e.g. it waited longer than its TTL)."""
        error = _dumps({"type": error_type, "message": message[:2000]})
        return self._transition(job_id, model, None, JobStatus.QUEUED, JobStatus.FAILED, error=error)

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
            "queue": self.keys.queue(model),
            "active": self.keys.active(),
            **self._outbox(job_id),
        }
        args = {
            "tenant": tenant,
            "now": time.time(),
            "retention_s": self.retention_s,
            "cancel_channel": self.keys.cancel_channel(),
        }
        return CancelOutcome(as_text(self._cancel(keys, args)))

    def requeue_if_lease_expired(self, job_id: str, model: str, now: float | None = None) -> RequeueOutcome:
        """A running job whose lease expired goes back to the queue with a new broker message
        (the reconciler: its worker died or hung). Its next start counts another attempt.

        Returns:
            ``RequeueOutcome.REQUEUED``; ``CANCELED`` (its cancel had been requested, so it
            ends canceled instead); ``HELD`` (the lease is live, or it is no longer running).
        """
        return self._requeue_job(job_id, model, None, time.time() if now is None else now)

    def give_back(self, job_id: str, model: str, attempt: int) -> RequeueOutcome:
        """The attempt holding a running job gives it back to the queue (its worker stalled and
        is about to exit), at once rather than when the lease runs out.

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
            "queue": self.keys.queue(model),
            "broker": celery_queue(model),
            "active": self.keys.active(),
            **self._outbox(job_id),
        }
        args = {
            "now": now,
            "retention_s": self.retention_s,
            "broker_message": task_message(job_id, model),
            "attempt": "" if attempt is None else attempt,
        }
        return RequeueOutcome(as_text(self._requeue(keys, args)))

    def _transition(
        self,
        job_id: str,
        model: str,
        attempt: int | None,
        source: JobStatus,
        target: JobStatus,
        generation_s: float | None = None,
        **values: str,
    ) -> bool:
        """``source`` → ``target`` with ``values``; False when the job was not in ``source`` (or
        ``attempt`` no longer holds it)."""
        keys = {
            "job": self.keys.job(job_id),
            **self._indexes(source, "from_index"),
            **self._indexes(target, "to_index"),
            "queue": self.keys.queue(model),
            "active": self.keys.active(),
            "model": self.keys.model(model),
            **self._outbox(job_id),
        }
        args = {
            "attempt": "" if attempt is None else attempt,
            "source": source.value,
            "target": target.value,
            "now": time.time(),
            "retention_s": self.retention_s,
            "generation_s": "" if generation_s is None else float(generation_s),
        }
        varargs = [item for pair in values.items() for item in pair]
        return int(self._finish(keys, args, varargs)) == 1


def _pick(mapping: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    return {name: mapping[name] for name in names}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
