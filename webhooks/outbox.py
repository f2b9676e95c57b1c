"""The Redis side of webhook delivery: claim due jobs, read a job's head message, settle an
attempt, redeliver, list attempts. Every write is one Lua script (one atomic step).

The job store fills the outbox (``jobs/store.py``, ``emit``): per job, a list of pending
message ids in order and a hash of events; the job enters ``dq:wh:due`` when its list goes
from empty to non-empty. A deliverer *claims* a due job by pushing its score to
``now + claim timeout`` (a crashed deliverer's claim comes back by itself), sends the head
message, then settles: the attempt is recorded; a final outcome pops the head (only if it is
still that message) and makes the job due again if more are pending; a retry re-schedules
the job at the message's next attempt. Only the head of a job is ever in flight, so a job's
events arrive in order.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import redis

from jobs.connections import as_text
from jobs.keys import Keys
from jobs.lua import BoundScript, Script
from jobs.stats import LUA as STATS_LUA

# The per-job scripts below take these keys (names shared with the job store: ``Keys.outbox``).
JOB_KEYS = ("wh_due", "wh_pending", "wh_attempts", "deliveries", "job", "wh_events")

CLAIM = Script(
    name="claim",
    doc="up to `limit` job ids due by `now`, each now held until `claim_until`",
    keys=("wh_due",),
    args=("now", "claim_until", "limit"),
    body=r"""
local ids = redis.call('ZRANGEBYSCORE', K.wh_due, '-inf', A.now, 'LIMIT', 0, tonumber(A.limit))
for _, id in ipairs(ids) do redis.call('ZADD', K.wh_due, A.claim_until, id) end
return ids
""",
)

SETTLE = Script(
    name="settle",
    doc="record one delivery attempt at a job's head message and move the job on",
    keys=(*JOB_KEYS, "wh_stats"),
    args=(
        "job_id",
        "msg_id",
        "record",  # the attempt as JSON, '' = none to record
        "attempts_made",
        "final",  # '1' ends the message (delivered, refused, gave up); '0' retries it
        "next_due",
        "now",
        "keep_claim_until",  # '' = release the claim
        "retention_s",
        "outcome",  # the attempt's outcome, counted ('' = none: nothing was sent)
        "delivery_s",  # delivered: seconds from the event to now ('' = not delivered)
    ),
    prelude=STATS_LUA,
    body=r"""
-- Answers 'moved' (the head is another message now: someone else settled this one),
-- 'retry', 'empty' (nothing more pending), 'next' (more pending, still claimed by the
-- caller) or 'more' (more pending, due now for any deliverer).
local function keep_with_job(key)
  if redis.call('TTL', key) ~= -1 then return end  -- missing, or already expiring
  local ttl = redis.call('TTL', K.job)
  if ttl > 0 then redis.call('EXPIRE', key, ttl)
  elseif ttl == -2 then redis.call('EXPIRE', key, A.retention_s) end
end
if A.record ~= '' then
  redis.call('RPUSH', K.deliveries, A.record)
  keep_with_job(K.deliveries)
end
count(K.wh_stats, A.outcome)
if A.delivery_s ~= '' then observe(K.wh_stats, 'delivery', tonumber(A.delivery_s)) end
if redis.call('LINDEX', K.wh_pending, 0) ~= A.msg_id then return 'moved' end
if A.final == '0' then
  redis.call('HSET', K.wh_attempts, A.msg_id, A.attempts_made)
  keep_with_job(K.wh_attempts)
  redis.call('ZADD', K.wh_due, A.next_due, A.job_id)
  return 'retry'
end
redis.call('LPOP', K.wh_pending)
redis.call('HDEL', K.wh_attempts, A.msg_id)
if redis.call('LLEN', K.wh_pending) == 0 then
  redis.call('ZREM', K.wh_due, A.job_id)
  return 'empty'
end
if A.keep_claim_until ~= '' then
  redis.call('ZADD', K.wh_due, A.keep_claim_until, A.job_id)
  return 'next'
end
redis.call('ZADD', K.wh_due, A.now, A.job_id)
return 'more'
""",
)

HEAD = Script(
    name="head",
    doc="a job's head message: its id, its event and the attempts made at it (false: none pending)",
    keys=JOB_KEYS,
    args=(),
    body=r"""
local id = redis.call('LINDEX', K.wh_pending, 0)
if not id then return false end
return {id, redis.call('HGET', K.wh_events, id) or '', redis.call('HGET', K.wh_attempts, id) or '0'}
""",
)

RELEASE = Script(
    name="release",
    doc="a claimed job with nothing pending leaves the due set (1); else it is due now (0)",
    keys=JOB_KEYS,
    args=("job_id", "now"),
    body=r"""
if redis.call('LLEN', K.wh_pending) == 0 then
  redis.call('ZREM', K.wh_due, A.job_id)
  return 1
end
redis.call('ZADD', K.wh_due, A.now, A.job_id)
return 0
""",
)

REDELIVER = Script(
    name="redeliver",
    doc="queue a known message again (same id, attempts from 1): 1, or 0 when the job has no such message",
    keys=JOB_KEYS,
    args=("job_id", "msg_id", "now"),
    body=r"""
if redis.call('HEXISTS', K.wh_events, A.msg_id) == 0 then return 0 end
redis.call('HDEL', K.wh_attempts, A.msg_id)
local pos = redis.call('LPOS', K.wh_pending, A.msg_id)
if not pos then
  if redis.call('RPUSH', K.wh_pending, A.msg_id) == 1 then redis.call('ZADD', K.wh_due, A.now, A.job_id) end
elseif pos == 0 then
  redis.call('ZADD', K.wh_due, 'LT', A.now, A.job_id)  -- waiting for a retry: due now
end
return 1
""",
)

OUTBOX_SCRIPTS = (CLAIM, SETTLE, HEAD, RELEASE, REDELIVER)


class SettleAnswer(str, enum.Enum):
    """Where a job's outbox stands after ``Outbox.settle``."""

    MOVED = "moved"  # the head is another message now: someone else settled this one
    RETRY = "retry"  # the message is due again at its next attempt
    EMPTY = "empty"  # nothing more pending
    NEXT = "next"  # more pending, still claimed by the caller: send the next one
    MORE = "more"  # more pending, released: due now for any deliverer


@dataclass(frozen=True)
class PendingMessage:
    job_id: str
    msg_id: str
    event: dict[str, Any] | None  # None: the event expired (retention) before it was sent
    attempts_made: int


class Outbox:
    """The outbox of every job: what the deliverers claim, send and settle."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None, *, retention_s: int = 7 * 86_400) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.retention_s = retention_s
        self._claim = BoundScript(client, CLAIM)
        self._settle = BoundScript(client, SETTLE)
        self._release = BoundScript(client, RELEASE)
        self._head = BoundScript(client, HEAD)
        self._redeliver = BoundScript(client, REDELIVER)

    def _job_keys(self, job_id: str) -> dict[str, str]:
        outbox = self.keys.outbox(job_id)
        return {name: outbox[name] if name != "job" else self.keys.job(job_id) for name in JOB_KEYS}

    def claim(self, now: float, hold_s: float, limit: int) -> list[str]:
        """Up to ``limit`` job ids due by ``now``, each now held for ``hold_s``."""
        args = {"now": now, "claim_until": now + hold_s, "limit": limit}
        ids = self._claim({"wh_due": self.keys.webhook_due()}, args)
        return [as_text(i) for i in ids]

    def head(self, job_id: str) -> PendingMessage | None:
        """The job's oldest undelivered message, or None when nothing is pending."""
        reply = self._head(self._job_keys(job_id))
        if not reply:
            return None
        msg_id, raw_event, made = (as_text(part) for part in reply)
        event = json.loads(raw_event) if raw_event else None
        return PendingMessage(job_id, msg_id, event, int(made or 0))

    def settle(
        self,
        message: PendingMessage,
        record: dict[str, Any] | None,
        *,
        final: bool,
        now: float,
        next_due: float | None = None,
        keep_claim_until: float | None = None,
        delivery_s: float | None = None,
    ) -> SettleAnswer:
        """Record one attempt (``record``) and move the job on.

        Returns:
            ``SettleAnswer.RETRY`` (not final: due again at ``next_due``), ``EMPTY``, ``NEXT``
            (more pending and ``keep_claim_until`` given: the caller sends the next one),
            ``MORE`` (more pending, due now for anyone) or ``MOVED`` (someone else settled it).
        """
        args = {
            "job_id": message.job_id,
            "msg_id": message.msg_id,
            "record": json.dumps(record, separators=(",", ":")) if record is not None else "",
            "attempts_made": message.attempts_made + 1,
            "final": "1" if final else "0",
            "next_due": next_due if next_due is not None else now,
            "now": now,
            "keep_claim_until": keep_claim_until if keep_claim_until is not None else "",
            "retention_s": self.retention_s,
            "outcome": (record or {}).get("outcome", ""),
            "delivery_s": delivery_s if delivery_s is not None else "",
        }
        keys = {**self._job_keys(message.job_id), "wh_stats": self.keys.webhook_stats()}
        return SettleAnswer(as_text(self._settle(keys, args)))

    def release(self, job_id: str, now: float) -> None:
        """Let go of a claimed job: out of the due set if nothing is pending, else due now."""
        self._release(self._job_keys(job_id), {"job_id": job_id, "now": now})

    def redeliver(self, job_id: str, msg_id: str, now: float) -> bool:
        """Queue ``msg_id`` again (same webhook-id, attempts from 1); False if the job has no such message."""
        args = {"job_id": job_id, "msg_id": msg_id, "now": now}
        return int(self._redeliver(self._job_keys(job_id), args)) == 1

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """Every delivery attempt of the job, oldest first."""
        raw = self.redis.lrange(self.keys.deliveries(job_id), 0, -1)
        return [json.loads(item) for item in raw]  # type: ignore[union-attr]

    def wait_for_events(self, timeout_s: float) -> None:
        """Block until a transition emits an event (or ``timeout_s``): no polling latency."""
        self.redis.blpop([self.keys.webhook_wake()], timeout=timeout_s)

    def due_count(self) -> int:
        return int(self.redis.zcard(self.keys.webhook_due()))
