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

import json
from dataclasses import dataclass
from typing import Any

import redis

from jobs.keys import Keys

# ARGV: now, claim until, limit
_CLAIM = r"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

# Per-job scripts share KEYS: 1 due zset, 2 pending list, 3 attempts hash, 4 deliveries list,
# 5 job hash, 6 events hash.
#
# ARGV: job id, message id, record JSON ('' = none), attempts made, final ('1'/'0'),
#       next due (retry), now, keep the claim until ('' = release it), retention seconds.
# Returns 'moved' (the head is another message now: someone else settled this one),
# 'retry', 'empty' (nothing more pending), 'next' (more pending, still claimed by the caller)
# or 'more' (more pending, due now for any deliverer).
_SETTLE = r"""
local function keep_with_job(key)
  if redis.call('TTL', key) ~= -1 then return end  -- missing, or already expiring
  local ttl = redis.call('TTL', KEYS[5])
  if ttl > 0 then redis.call('EXPIRE', key, ttl)
  elseif ttl == -2 then redis.call('EXPIRE', key, ARGV[9]) end
end
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[4], ARGV[3])
  keep_with_job(KEYS[4])
end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return 'moved' end
if ARGV[5] == '0' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  keep_with_job(KEYS[3])
  redis.call('ZADD', KEYS[1], ARGV[6], ARGV[1])
  return 'retry'
end
redis.call('LPOP', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[2])
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 'empty'
end
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[8], ARGV[1])
  return 'next'
end
redis.call('ZADD', KEYS[1], ARGV[7], ARGV[1])
return 'more'
"""

# The head message of a job, its event and the attempts made at it, in one round trip.
_HEAD = r"""
local id = redis.call('LINDEX', KEYS[2], 0)
if not id then return false end
return {id, redis.call('HGET', KEYS[6], id) or '', redis.call('HGET', KEYS[3], id) or '0'}
"""

# ARGV: job id, now. A claimed job with nothing pending leaves the due set.
_RELEASE = r"""
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 0
"""

# ARGV: job id, message id, now. Queue a known message again (same id); its attempts restart.
_REDELIVER = r"""
if redis.call('HEXISTS', KEYS[6], ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
local pos = redis.call('LPOS', KEYS[2], ARGV[2])
if not pos then
  if redis.call('RPUSH', KEYS[2], ARGV[2]) == 1 then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
elseif pos == 0 then
  redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[1])  -- waiting for a retry: due now
end
return 1
"""


@dataclass(frozen=True)
class PendingMessage:
    job_id: str
    msg_id: str
    event: dict[str, Any] | None  # None: the event expired (retention) before it was sent
    attempts_made: int


class Outbox:
    def __init__(self, client: redis.Redis, keys: Keys | None = None, *, retention_s: int = 7 * 86_400) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.retention_s = retention_s
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._head = client.register_script(_HEAD)
        self._redeliver = client.register_script(_REDELIVER)

    def _job_keys(self, job_id: str) -> list[str]:
        k = self.keys
        return [
            k.webhook_due(),
            k.webhook_pending(job_id),
            k.webhook_attempts(job_id),
            k.deliveries(job_id),
            k.job(job_id),
            k.webhook_events(job_id),
        ]

    def claim(self, now: float, hold_s: float, limit: int) -> list[str]:
        """Up to ``limit`` job ids due by ``now``, each now held for ``hold_s``."""
        ids = self._claim(keys=[self.keys.webhook_due()], args=[repr(now), repr(now + hold_s), str(limit)])
        return [_text(i) for i in ids]

    def head(self, job_id: str) -> PendingMessage | None:
        reply = self._head(keys=self._job_keys(job_id))
        if not reply:
            return None
        msg_id, raw_event, made = (_text(part) for part in reply)
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
    ) -> str:
        """Record one attempt and move the job on (see ``_SETTLE`` for the answers)."""
        args = [
            message.job_id,
            message.msg_id,
            json.dumps(record, separators=(",", ":")) if record is not None else "",
            str(message.attempts_made + 1),
            "1" if final else "0",
            repr(next_due if next_due is not None else now),
            repr(now),
            repr(keep_claim_until) if keep_claim_until is not None else "",
            str(self.retention_s),
        ]
        return _text(self._settle(keys=self._job_keys(message.job_id), args=args))

    def release(self, job_id: str, now: float) -> None:
        self._release(keys=self._job_keys(job_id), args=[job_id, repr(now)])

    def redeliver(self, job_id: str, msg_id: str, now: float) -> bool:
        """Queue ``msg_id`` again (same webhook-id, attempts from 1); False if the job has no such message."""
        return int(self._redeliver(keys=self._job_keys(job_id), args=[job_id, msg_id, repr(now)])) == 1

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        raw = self.redis.lrange(self.keys.deliveries(job_id), 0, -1)
        return [json.loads(item) for item in raw]  # type: ignore[union-attr]

    def wait_for_events(self, timeout_s: float) -> None:
        """Block until a transition emits an event (or ``timeout_s``): no polling latency."""
        self.redis.blpop([self.keys.webhook_wake()], timeout=timeout_s)

    def due_count(self) -> int:
        return int(self.redis.zcard(self.keys.webhook_due()))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
