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

from jobs.keys import Keys
from jobs.models import JobStatus

# KEYS: job, idem ("" when none), seq, jobs, jobs:queued, queue:<model>
# ARGV: id, request sha256, idem ttl, field, value, field, value, ...
_CREATE = """
if KEYS[2] ~= '' then
  local rec = redis.call('GET', KEYS[2])
  if rec then return {0, rec} end
end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 4))
redis.call('ZADD', KEYS[4], seq, ARGV[1])
redis.call('ZADD', KEYS[5], seq, ARGV[1])
redis.call('ZADD', KEYS[6], seq, ARGV[1])
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2], 'EX', tonumber(ARGV[3]))
end
return {1, tostring(seq)}
"""

# KEYS: job, jobs:queued, jobs:running, queue:<model>, jobs:failed
# ARGV: worker, now, lease_until, max_attempts
_START = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', '0'} end
if st ~= 'queued' then return {st, redis.call('HGET', KEYS[1], 'attempts') or '0'} end
local cur = redis.call('HMGET', KEYS[1], 'seq', 'id', 'attempts')
local seq, id = cur[1], cur[2]
local attempts = tonumber(cur[3] or '0')
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[2], id)
if attempts >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'completed_at', ARGV[2],
    'error', cjson.encode({type='max_attempts', message='gave up after ' .. attempts .. ' attempts'}))
  redis.call('ZADD', KEYS[5], seq, id)
  return {'max_attempts', tostring(attempts)}
end
attempts = attempts + 1
redis.call('HSET', KEYS[1], 'status', 'running', 'attempts', attempts, 'worker', ARGV[1],
  'started_at', ARGV[2], 'lease_until', ARGV[3], 'progress_step', 0)
redis.call('ZADD', KEYS[3], seq, id)
return {'started', tostring(attempts), redis.call('HGET', KEYS[1], 'input')}
"""

# KEYS: job; ARGV: attempt, step, lease_until
# Returns 'ok', 'cancel' (a cancel was requested) or 'lost' (this attempt no longer owns it).
_PROGRESS = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'cancel_requested')
if cur[1] ~= 'running' or cur[2] ~= ARGV[1] then return 'lost' end
redis.call('HSET', KEYS[1], 'progress_step', ARGV[2], 'lease_until', ARGV[3])
if cur[3] == '1' then return 'cancel' end
return 'ok'
"""

# KEYS: job, jobs:running, jobs:<target>
# ARGV: attempt, target status, now, field, value, ...
_FINISH = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'seq', 'id')
if cur[1] ~= 'running' or cur[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'completed_at', ARGV[3], unpack(ARGV, 4))
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('ZREM', KEYS[2], cur[4])
redis.call('ZADD', KEYS[3], cur[3], cur[4])
return 1
"""


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
    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self._create = client.register_script(_CREATE)
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._finish = client.register_script(_FINISH)

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
        now: float | None = None,
    ) -> CreateResult:
        fields: dict[str, str] = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "model": model,
            "input": _dumps(job_input),
            "created_at": repr(now if now is not None else time.time()),
            "progress_step": "0",
            "progress_total": str(job_input.get("num_inference_steps", 0)),
            "attempts": "0",
        }
        if metadata is not None:
            fields["metadata"] = _dumps(metadata)
        if webhook:
            fields["webhook"] = webhook
        if webhook_events_filter is not None:
            fields["webhook_events_filter"] = _dumps(list(webhook_events_filter))
        k = self.keys
        keys = [
            k.job(job_id),
            k.idempotency(idempotency_key) if idempotency_key else "",
            k.seq(),
            k.jobs(),
            k.jobs_by_status(JobStatus.QUEUED.value),
            k.queue(model),
        ]
        argv: list[str] = [job_id, request_hash, str(idempotency_ttl_s)]
        for name, value in fields.items():
            argv += [name, value]
        created, value = self._create(keys=keys, args=argv)
        if int(created) == 1:
            return CreateResult(True, job_id, request_hash)
        existing_id, _, existing_hash = _text(value).partition(" ")
        return CreateResult(False, existing_id, existing_hash)

    # -- reads ----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            return None
        return JobRecord.from_hash({_text(a): _text(b) for a, b in raw.items()})

    def get_with_position(self, job_id: str) -> tuple[JobRecord | None, int | None]:
        """The job and, when queued, how many queued jobs of its model are ahead of it."""
        record = self.get(job_id)
        if record is None or record.status is not JobStatus.QUEUED:
            return record, None
        rank: Any = self.redis.zrank(self.keys.queue(record.model), job_id)
        return record, (int(rank) if rank is not None else None)

    def queue_depth(self, model: str) -> int:
        return int(self.redis.zcard(self.keys.queue(model)))

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
        """queued → running for this worker; anything else is reported, not changed."""
        now = time.time()
        k = self.keys
        reply = self._start(
            keys=[
                k.job(job_id),
                k.jobs_by_status("queued"),
                k.jobs_by_status("running"),
                k.queue(model),
                k.jobs_by_status("failed"),
            ],
            args=[worker, repr(now), repr(now + lease_s), str(max_attempts)],
        )
        job_input = json.loads(_text(reply[2])) if len(reply) > 2 else None
        return StartResult(_text(reply[0]), int(reply[1]), job_input)

    def progress(self, job_id: str, attempt: int, step: int, *, lease_s: float) -> str:
        """Record a denoising step and renew the lease: 'ok', 'cancel' or 'lost'."""
        until = time.time() + lease_s
        return _text(self._progress(keys=[self.keys.job(job_id)], args=[str(attempt), str(step), repr(until)]))

    def succeed(self, job_id: str, attempt: int, outputs: list[dict[str, Any]], *, generation_seconds: float) -> bool:
        return self._finish_as(
            job_id,
            attempt,
            JobStatus.SUCCEEDED,
            outputs=_dumps(outputs),
            generation_seconds=repr(generation_seconds),
        )

    def fail(self, job_id: str, attempt: int, error_type: str, message: str) -> bool:
        error = _dumps({"type": error_type, "message": message[:2000]})
        return self._finish_as(job_id, attempt, JobStatus.FAILED, error=error)

    def cancel_running(self, job_id: str, attempt: int) -> bool:
        """running → canceled by the attempt that stopped at a cancel request."""
        return self._finish_as(job_id, attempt, JobStatus.CANCELED)

    def _finish_as(self, job_id: str, attempt: int, target: JobStatus, **values: str) -> bool:
        k = self.keys
        argv = [str(attempt), target.value, repr(time.time())]
        for name, value in values.items():
            argv += [name, value]
        done = self._finish(
            keys=[k.job(job_id), k.jobs_by_status("running"), k.jobs_by_status(target.value)], args=argv
        )
        return int(done) == 1


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
