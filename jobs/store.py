"""JobStore: a job's state and every transition of it, each one atomic (a Lua script).

The job hash is the source of truth; Celery only carries ``(job_id, model)``. Terminal
states are final: every script re-checks the current status (and, for a running job, the
attempt number it was started with, which fences out a stale worker) before it writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from jobs.keys import Keys, celery_queue
from jobs.models import JobStatus
from jobs.transport import task_message

# Every transition script gets the same KEYS (see JobStore._keys):
#   1 job hash   2-6 status indexes (queued, running, succeeded, failed, canceled)
#   7 queue:<model>   8 webhook pending list   9 webhook events hash   10 webhook due zset
#   11 the model's broker list (Celery queue)   12 deliveries list   13 webhook wake-up list
#   14 idempotency (create only)   15 seq   16 jobs
# The prelude moves a job between status indexes and emits webhook events (an outbox written
# in the same atomic step as the state it describes, so an event exists iff its state does).
_PRELUDE = r"""
local IDX = {queued=KEYS[2], running=KEYS[3], succeeded=KEYS[4], failed=KEYS[5], canceled=KEYS[6]}
-- The named fields of the job, with its id and webhook settings, in one HMGET.
local function fetch(...)
  local names = {...}
  local values = redis.call('HMGET', KEYS[1], 'id', 'webhook', 'webhook_events_filter', unpack(names))
  local job = {id=values[1], webhook=values[2], filter=values[3]}
  for i, name in ipairs(names) do job[name] = values[i + 3] end
  return job
end
local function move(job, from, to)
  redis.call('ZREM', IDX[from], job.id)
  redis.call('ZADD', IDX[to], job.seq, job.id)
end
local function emit(job, event, now)
  if not job.webhook then return end
  local short = string.sub(event, 5)
  if job.filter then
    if not string.find(job.filter, '"' .. short .. '"', 1, true) then return end
  elseif short == 'progress' then
    return
  end
  local n = redis.call('HINCRBY', KEYS[1], 'event_seq', 1)
  local msg = 'msg_' .. job.id .. '_' .. n
  local flat = redis.call('HGETALL', KEYS[1])
  local snapshot = {}
  for i = 1, #flat, 2 do snapshot[flat[i]] = flat[i + 1] end
  redis.call('HSET', KEYS[9], msg, cjson.encode({id=msg, type=event, timestamp=tonumber(now), job=snapshot}))
  if redis.call('RPUSH', KEYS[8], msg) == 1 then redis.call('ZADD', KEYS[10], now, job.id) end
  if redis.call('LLEN', KEYS[13]) == 0 then redis.call('RPUSH', KEYS[13], '1') end  -- wake a deliverer
end
local function retain(job, seconds)
  redis.call('EXPIRE', KEYS[1], seconds)
  if job.webhook then
    redis.call('EXPIRE', KEYS[9], seconds)
    redis.call('EXPIRE', KEYS[12], seconds)
  end
end
"""

# ARGV: id, request sha256, idem ttl, now, broker message, field, value, ...
_CREATE = (
    _PRELUDE
    + r"""
if KEYS[14] ~= '' then
  local rec = redis.call('GET', KEYS[14])
  if rec then return {0, rec} end
end
local seq = redis.call('INCR', KEYS[15])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 6))
redis.call('ZADD', KEYS[16], seq, ARGV[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[7], seq, ARGV[1])
redis.call('LPUSH', KEYS[11], ARGV[5])
if KEYS[14] ~= '' then
  redis.call('SET', KEYS[14], ARGV[1] .. ' ' .. ARGV[2], 'EX', tonumber(ARGV[3]))
end
return {1, tostring(seq), redis.call('ZRANK', KEYS[7], ARGV[1])}
"""
)

# ARGV: worker, now, lease_until, max_attempts, retention
_START = (
    _PRELUDE
    + r"""
local job = fetch('status', 'attempts', 'seq', 'input')
if not job.status then return {'missing', '0'} end
if job.status ~= 'queued' then return {job.status, job.attempts or '0'} end
local attempts = tonumber(job.attempts or '0')
redis.call('ZREM', KEYS[7], job.id)
if attempts >= tonumber(ARGV[4]) then
  local err = cjson.encode({type='max_attempts', message='gave up after ' .. attempts .. ' attempt(s); ' ..
    'the last one ended without a result (its worker died or lost its lease)'})
  redis.call('HSET', KEYS[1], 'status', 'failed', 'completed_at', ARGV[2], 'error', err)
  move(job, 'queued', 'failed')
  emit(job, 'job.failed', ARGV[2])
  retain(job, ARGV[5])
  return {'max_attempts', tostring(attempts)}
end
attempts = attempts + 1
redis.call('HSET', KEYS[1], 'status', 'running', 'attempts', attempts, 'worker', ARGV[1],
  'started_at', ARGV[2], 'lease_until', ARGV[3], 'progress_step', 0)
move(job, 'queued', 'running')
emit(job, 'job.started', ARGV[2])
return {'started', tostring(attempts), job.input}
"""
)

# ARGV: attempt, step, lease_until, now, progress event interval
# Returns 'ok', 'cancel' (a cancel was requested) or 'lost' (this attempt no longer owns it).
_PROGRESS = (
    _PRELUDE
    + r"""
local job = fetch('status', 'attempts', 'cancel_requested', 'progress_event_at')
if job.status ~= 'running' or job.attempts ~= ARGV[1] then return 'lost' end
if job.cancel_requested == '1' then return 'cancel' end
if tonumber(ARGV[4]) - tonumber(job.progress_event_at or '0') >= tonumber(ARGV[5]) and job.webhook then
  redis.call('HSET', KEYS[1], 'progress_step', ARGV[2], 'lease_until', ARGV[3], 'progress_event_at', ARGV[4])
  emit(job, 'job.progress', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'progress_step', ARGV[2], 'lease_until', ARGV[3])
end
return 'ok'
"""
)

# KEYS: job, prefix of the per-model queue zsets (`dq:queue:`). The job and, if queued, its
# position, read together: one round trip, and never "queued" with no position.
_READ = r"""
local flat = redis.call('HGETALL', KEYS[1])
local status, model = nil, nil
for i = 1, #flat, 2 do
  if flat[i] == 'status' then status = flat[i + 1] elseif flat[i] == 'model' then model = flat[i + 1] end
end
local rank = false
if status == 'queued' and model then rank = redis.call('ZRANK', KEYS[2] .. model, ARGV[1]) end
return {flat, rank}
"""

# ARGV: attempt, lease_until. Renews a running job's lease for the attempt that holds it.
_RENEW = r"""
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempts')
if cur[1] ~= 'running' or cur[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
return 1
"""

# ARGV: attempt ('' = any attempt), required status, target status, now, retention, field, value, ...
# A succeeded job's progress reads total/total (workers don't write the last step).
_FINISH = (
    _PRELUDE
    + r"""
local job = fetch('status', 'attempts', 'seq', 'progress_step', 'progress_total')
if job.status ~= ARGV[2] then return 0 end
if ARGV[1] ~= '' and job.attempts ~= ARGV[1] then return 0 end
local step = job.progress_step or '0'
if ARGV[3] == 'succeeded' then step = job.progress_total end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'completed_at', ARGV[4], 'progress_step', step, unpack(ARGV, 6))
if ARGV[2] == 'queued' then redis.call('ZREM', KEYS[7], job.id) end
move(job, ARGV[2], ARGV[3])
emit(job, 'job.' .. ARGV[3], ARGV[4])
retain(job, ARGV[5])
return 1
"""
)

# ARGV: now, retention, cancel channel. queued → canceled at once; running → flag the job and
# tell the workers (pub/sub: the one running it stops at its next step; the flag is the
# fallback its next progress write reads).
_CANCEL = (
    _PRELUDE
    + r"""
local job = fetch('status', 'seq')
if not job.status then return 'missing' end
if job.status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'completed_at', ARGV[1])
  redis.call('ZREM', KEYS[7], job.id)
  move(job, 'queued', 'canceled')
  emit(job, 'job.canceled', ARGV[1])
  retain(job, ARGV[2])
  return 'canceled'
end
if job.status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('PUBLISH', ARGV[3], job.id)
  return 'cancel_requested'
end
return job.status
"""
)

# ARGV: now, retention, broker message. running with an expired lease → queued again (keeps
# attempts and its place in the queue) with a new message; a job whose cancel was requested
# ends canceled instead.
_REQUEUE = (
    _PRELUDE
    + r"""
local job = fetch('status', 'lease_until', 'seq', 'cancel_requested')
if job.status ~= 'running' or tonumber(job.lease_until or '0') >= tonumber(ARGV[1]) then return 0 end
if job.cancel_requested == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'completed_at', ARGV[1])
  move(job, 'running', 'canceled')
  emit(job, 'job.canceled', ARGV[1])
  retain(job, ARGV[2])
  return 2
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress_step', 0)
redis.call('HDEL', KEYS[1], 'lease_until', 'worker', 'started_at')
move(job, 'running', 'queued')
redis.call('ZADD', KEYS[7], job.seq, job.id)
redis.call('LPUSH', KEYS[11], ARGV[3])
return 1
"""
)


@dataclass
class JobRecord:
    """A job as stored, parsed into Python types."""

    id: str
    status: JobStatus
    model: str
    input: dict[str, Any]
    seq: int
    created_at: float
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
    created: bool
    job_id: str
    request_hash: str  # the stored request's hash (differs from ours on a key reused)
    record: JobRecord | None = None  # when created: the job as written (no read-back needed)
    queue_position: int | None = None


@dataclass(frozen=True)
class StartResult:
    status: str  # 'started' when this call started it; otherwise the status that made it skip
    attempt: int
    input: dict[str, Any] | None = None

    @property
    def started(self) -> bool:
        return self.status == "started"


@dataclass(frozen=True)
class Page:
    jobs: list[JobRecord]
    next_cursor: str | None


class JobStore:
    """Every read and transition of a job. Transitions are Lua scripts: one atomic step each."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None, *, retention_s: int = 7 * 86_400) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.retention_s = retention_s
        self.progress_event_interval_s = 0.5
        self._create = client.register_script(_CREATE)
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._requeue = client.register_script(_REQUEUE)
        self._read = client.register_script(_READ)

    def _keys(self, job_id: str, model: str) -> list[str]:
        k = self.keys
        statuses = [k.jobs_by_status(s.value) for s in JobStatus]
        return [
            k.job(job_id),
            *statuses,
            k.queue(model),
            k.webhook_pending(job_id),
            k.webhook_events(job_id),
            k.webhook_due(),
            celery_queue(model),
            k.deliveries(job_id),
            k.webhook_wake(),
        ]

    # -- creation -------------------------------------------------------------------
    def create(
        self,
        job_id: str,
        model: str,
        job_input: dict[str, Any],
        *,
        metadata: dict[str, Any] | None = None,
        webhook: str | None = None,
        webhook_events_filter: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        request_hash: str = "",
        idempotency_ttl_s: int = 86_400,
        extra: dict[str, str] | None = None,
        now: float | None = None,
    ) -> CreateResult:
        """A new queued job and its broker message, in one atomic step (no orphan either way)."""
        created_at = now if now is not None else time.time()
        fields: dict[str, str] = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "model": model,
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
        keys = [
            *self._keys(job_id, model),
            k.idempotency(idempotency_key) if idempotency_key else "",
            k.seq(),
            k.jobs(),
        ]
        argv = [job_id, request_hash, str(idempotency_ttl_s), repr(created_at), task_message(job_id, model)]
        for name, value in fields.items():
            argv += [name, value]
        reply = self._create(keys=keys, args=argv)
        if int(reply[0]) == 1:
            record = JobRecord.from_hash({**fields, "seq": _text(reply[1])})
            return CreateResult(True, job_id, request_hash, record, int(reply[2]))
        existing_id, _, existing_hash = _text(reply[1]).partition(" ")
        return CreateResult(False, existing_id, existing_hash)

    # -- reads ----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            return None
        return JobRecord.from_hash({_text(a): _text(b) for a, b in raw.items()})

    def get_with_position(self, job_id: str) -> tuple[JobRecord | None, int | None]:
        """The job and, when queued, how many queued jobs of its model are ahead of it."""
        flat, rank = self._read(keys=[self.keys.job(job_id), self.keys.queue("")], args=[job_id])
        if not flat:
            return None, None
        raw = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
        return JobRecord.from_hash(raw), (int(rank) if rank is not None else None)

    def queued_messages(self, model: str) -> int:
        """Messages waiting in the model's broker list (what a worker would take next)."""
        return int(self.redis.llen(celery_queue(model)))

    def queue_depth(self, model: str) -> int:
        return int(self.redis.zcard(self.keys.queue(model)))

    def ids_with_status(self, status: JobStatus, limit: int = 1000) -> list[str]:
        ids: Any = self.redis.zrange(self.keys.jobs_by_status(status.value), 0, limit - 1)
        return [_text(i) for i in ids]

    def page(self, status: JobStatus | None = None, limit: int = 20, cursor: int | None = None) -> Page:
        """Newest first; ``cursor`` is the sequence number of the last job already seen."""
        index = self.keys.jobs_by_status(status.value) if status else self.keys.jobs()
        upper = f"({cursor}" if cursor is not None else "+inf"
        ids = [_text(i) for i in self.redis.zrevrangebyscore(index, upper, "-inf", start=0, num=limit + 1)]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids[:limit]:
            pipe.hgetall(self.keys.job(job_id))
        records = []
        for job_id, raw in zip(ids, pipe.execute(), strict=False):
            if raw:
                records.append(JobRecord.from_hash({_text(a): _text(b) for a, b in raw.items()}))
            else:  # expired by retention: drop it from the indexes lazily
                self.redis.zrem(index, job_id)
        more = len(ids) > limit
        next_cursor = str(records[-1].seq) if more and records else None
        return Page(records, next_cursor)

    # -- transitions ----------------------------------------------------------------
    def start(self, job_id: str, model: str, worker: str, *, lease_s: float, max_attempts: int = 3) -> StartResult:
        """queued → running for this worker (attempt + 1, lease); anything else: skip."""
        now = time.time()
        reply = self._start(
            keys=self._keys(job_id, model),
            args=[worker, repr(now), repr(now + lease_s), str(max_attempts), str(self.retention_s)],
        )
        job_input = json.loads(_text(reply[2])) if len(reply) > 2 else None
        return StartResult(_text(reply[0]), int(reply[1]), job_input)

    def progress(self, job_id: str, model: str, attempt: int, step: int, *, lease_s: float) -> str:
        """Record a denoising step and renew the lease: 'ok', 'cancel' or 'lost'."""
        now = time.time()
        args = [str(attempt), str(step), repr(now + lease_s), repr(now), repr(self.progress_event_interval_s)]
        return _text(self._progress(keys=self._keys(job_id, model), args=args))

    def renew(self, job_id: str, attempt: int, *, lease_s: float) -> bool:
        return int(self._renew(keys=[self.keys.job(job_id)], args=[str(attempt), repr(time.time() + lease_s)])) == 1

    def succeed(
        self, job_id: str, model: str, attempt: int, outputs: list[dict[str, Any]], *, generation_seconds: float
    ) -> bool:
        """running → succeeded, only for the attempt that holds the job."""
        return self._transition(
            job_id,
            model,
            attempt,
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
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

    def cancel(self, job_id: str, model: str) -> str:
        """'canceled' (was queued), 'cancel_requested' (running), else the terminal status."""
        args = [repr(time.time()), str(self.retention_s), self.keys.cancel_channel()]
        return _text(self._cancel(keys=self._keys(job_id, model), args=args))

    def requeue_if_lease_expired(self, job_id: str, model: str, now: float | None = None) -> int:
        """1: back to queued with a new message; 2: ended canceled; 0: lease still live."""
        now = time.time() if now is None else now
        args = [repr(now), str(self.retention_s), task_message(job_id, model)]
        return int(self._requeue(keys=self._keys(job_id, model), args=args))

    def _transition(
        self, job_id: str, model: str, attempt: int | None, source: JobStatus, target: JobStatus, **values: str
    ) -> bool:
        argv = [
            "" if attempt is None else str(attempt),
            source.value,
            target.value,
            repr(time.time()),
            str(self.retention_s),
        ]
        for name, value in values.items():
            argv += [name, value]
        return int(self._finish(keys=self._keys(job_id, model), args=argv)) == 1


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
