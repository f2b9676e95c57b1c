"""The job store's Lua scripts: every transition of a job, each one atomic.

Each script names its KEYS and ARGV (``jobs/lua.py`` puts them in a header and binds them to
``K.<name>`` / ``A.<name>``). ``PRELUDE`` holds what several scripts share: reading the job,
moving it between status indexes, and writing a webhook event into the job's outbox in the
same step as the state it describes (an event exists iff its state does). The outbox keys
carry the same names here and in ``webhooks/outbox.py`` (``Keys.outbox``).

Answers are the values of the ``str`` enums in ``jobs/store.py``.
"""

from __future__ import annotations

from jobs.lua import Script

# The keys ``emit`` and ``retain`` touch: every script that ends a state includes them.
OUTBOX = ("wh_pending", "wh_events", "wh_due", "wh_wake", "deliveries")

PRELUDE = r"""
-- The named fields of the job, with its id and webhook settings, in one HMGET.
local function fetch(...)
  local names = {...}
  local values = redis.call('HMGET', K.job, 'id', 'webhook', 'webhook_events_filter', unpack(names))
  local job = {id=values[1], webhook=values[2], filter=values[3]}
  for i, name in ipairs(names) do job[name] = values[i + 3] end
  return job
end
-- From one status index to another (same score: the creation sequence).
local function move(job, from_index, to_index)
  redis.call('ZREM', from_index, job.id)
  redis.call('ZADD', to_index, job.seq, job.id)
end
-- Append a webhook event (a snapshot of the job) to its outbox, if its filter wants it.
local function emit(job, event, now)
  if not job.webhook then return end
  local short = string.sub(event, 5)
  if job.filter then
    if not string.find(job.filter, '"' .. short .. '"', 1, true) then return end
  elseif short == 'progress' then
    return
  end
  local n = redis.call('HINCRBY', K.job, 'event_seq', 1)
  local msg = 'msg_' .. job.id .. '_' .. n
  local flat = redis.call('HGETALL', K.job)
  local snapshot = {}
  for i = 1, #flat, 2 do snapshot[flat[i]] = flat[i + 1] end
  redis.call('HSET', K.wh_events, msg, cjson.encode({id=msg, type=event, timestamp=tonumber(now), job=snapshot}))
  if redis.call('RPUSH', K.wh_pending, msg) == 1 then redis.call('ZADD', K.wh_due, now, job.id) end
  if redis.call('LLEN', K.wh_wake) == 0 then redis.call('RPUSH', K.wh_wake, '1') end  -- wake a deliverer
end
-- A finished job (and its webhook history) expires after the retention period.
local function retain(job, seconds)
  redis.call('EXPIRE', K.job, seconds)
  if job.webhook then
    redis.call('EXPIRE', K.wh_events, seconds)
    redis.call('EXPIRE', K.deliveries, seconds)
  end
end
"""

CREATE = Script(
    name="create",
    doc="a new queued job and its broker message (or the job an idempotency key already names)",
    keys=("job", "jobs", "queued", "queue", "broker", "idempotency", "seq"),
    args=("id", "request_hash", "idempotency_ttl_s", "broker_message"),
    varargs="field, value, … of the new job hash",
    body=r"""
-- K.idempotency is '' when the request has no Idempotency-Key.
if K.idempotency ~= '' then
  local rec = redis.call('GET', K.idempotency)
  if rec then return {'exists', rec} end
end
local seq = redis.call('INCR', K.seq)
redis.call('HSET', K.job, 'seq', seq, unpack(ARGV, VARARGS_AT))
redis.call('ZADD', K.jobs, seq, A.id)
redis.call('ZADD', K.queued, seq, A.id)
redis.call('ZADD', K.queue, seq, A.id)
redis.call('LPUSH', K.broker, A.broker_message)
if K.idempotency ~= '' then
  redis.call('SET', K.idempotency, A.id .. ' ' .. A.request_hash, 'EX', tonumber(A.idempotency_ttl_s))
end
return {'created', tostring(seq), redis.call('ZRANK', K.queue, A.id)}
""",
)

START = Script(
    name="start",
    doc="queued → running for one worker: attempt + 1 and a lease; or failed when out of attempts",
    keys=("job", "queued", "running", "failed", "queue", *OUTBOX),
    args=("worker", "now", "lease_until", "max_attempts", "retention_s"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'attempts', 'seq', 'input')
if not job.status then return {'missing', '0'} end
if job.status ~= 'queued' then return {job.status, job.attempts or '0'} end
local attempts = tonumber(job.attempts or '0')
redis.call('ZREM', K.queue, job.id)
if attempts >= tonumber(A.max_attempts) then
  local err = cjson.encode({type='max_attempts', message='gave up after ' .. attempts .. ' attempt(s); ' ..
    'the last one ended without a result (its worker died or lost its lease)'})
  redis.call('HSET', K.job, 'status', 'failed', 'completed_at', A.now, 'error', err)
  move(job, K.queued, K.failed)
  emit(job, 'job.failed', A.now)
  retain(job, A.retention_s)
  return {'max_attempts', tostring(attempts)}
end
attempts = attempts + 1
redis.call('HSET', K.job, 'status', 'running', 'attempts', attempts, 'worker', A.worker,
  'started_at', A.now, 'lease_until', A.lease_until, 'progress_step', 0)
move(job, K.queued, K.running)
emit(job, 'job.started', A.now)
return {'started', tostring(attempts), job.input}
""",
)

PROGRESS = Script(
    name="progress",
    doc="record a denoising step and renew the lease, for the attempt that holds the job",
    keys=("job", *OUTBOX),
    args=("attempt", "step", "lease_until", "now", "event_interval_s"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'attempts', 'cancel_requested', 'progress_event_at')
if job.status ~= 'running' or job.attempts ~= A.attempt then return 'lost' end
if job.cancel_requested == '1' then return 'cancel' end
if tonumber(A.now) - tonumber(job.progress_event_at or '0') >= tonumber(A.event_interval_s) and job.webhook then
  redis.call('HSET', K.job, 'progress_step', A.step, 'lease_until', A.lease_until, 'progress_event_at', A.now)
  emit(job, 'job.progress', A.now)
else
  redis.call('HSET', K.job, 'progress_step', A.step, 'lease_until', A.lease_until)
end
return 'ok'
""",
)

POSITION = Script(
    name="position",
    doc="a queued job's place in its model's queue (false when it is no longer queued)",
    keys=("job", "queue"),
    args=("id",),
    body=r"""
if redis.call('HGET', K.job, 'status') ~= 'queued' then return false end
return redis.call('ZRANK', K.queue, A.id)
""",
)

RENEW = Script(
    name="renew",
    doc="extend a running job's lease, for the attempt that holds it",
    keys=("job",),
    args=("attempt", "lease_until"),
    body=r"""
local cur = redis.call('HMGET', K.job, 'status', 'attempts')
if cur[1] ~= 'running' or cur[2] ~= A.attempt then return 0 end
redis.call('HSET', K.job, 'lease_until', A.lease_until)
return 1
""",
)

FINISH = Script(
    name="finish",
    doc="source status → terminal status (only for the given attempt, '' = any), with result fields",
    keys=("job", "source_index", "target_index", "queue", *OUTBOX),
    args=("attempt", "source", "target", "now", "retention_s"),
    varargs="field, value, … to set (outputs, error, generation_seconds)",
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'attempts', 'seq', 'progress_step', 'progress_total')
if job.status ~= A.source then return 0 end
if A.attempt ~= '' and job.attempts ~= A.attempt then return 0 end
-- A succeeded job's progress reads total/total (workers don't write the last step).
local step = job.progress_step or '0'
if A.target == 'succeeded' then step = job.progress_total end
redis.call('HSET', K.job, 'status', A.target, 'completed_at', A.now, 'progress_step', step, unpack(ARGV, VARARGS_AT))
if A.source == 'queued' then redis.call('ZREM', K.queue, job.id) end
move(job, K.source_index, K.target_index)
emit(job, 'job.' .. A.target, A.now)
retain(job, A.retention_s)
return 1
""",
)

CANCEL = Script(
    name="cancel",
    doc="queued → canceled at once; running → flag it and announce it to the workers",
    keys=("job", "queued", "canceled", "queue", *OUTBOX),
    args=("now", "retention_s", "cancel_channel"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'seq')
if not job.status then return 'missing' end
if job.status == 'queued' then
  redis.call('HSET', K.job, 'status', 'canceled', 'completed_at', A.now)
  redis.call('ZREM', K.queue, job.id)
  move(job, K.queued, K.canceled)
  emit(job, 'job.canceled', A.now)
  retain(job, A.retention_s)
  return 'canceled'
end
if job.status == 'running' then
  -- The worker running it stops at its next step (pub/sub); the flag is the fallback its
  -- next progress write reads.
  redis.call('HSET', K.job, 'cancel_requested', '1')
  redis.call('PUBLISH', A.cancel_channel, job.id)
  return 'cancel_requested'
end
return job.status
""",
)

REQUEUE = Script(
    name="requeue",
    doc="running → queued again with a new broker message (or canceled), when its lease expired "
    "or when the attempt holding it gives it back",
    keys=("job", "running", "queued", "canceled", "queue", "broker", *OUTBOX),
    args=("now", "retention_s", "broker_message", "attempt"),  # attempt '' = only if the lease expired
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'lease_until', 'seq', 'cancel_requested', 'attempts')
if job.status ~= 'running' then return 'held' end
if A.attempt == '' and tonumber(job.lease_until or '0') >= tonumber(A.now) then return 'held' end
if A.attempt ~= '' and job.attempts ~= A.attempt then return 'held' end
if job.cancel_requested == '1' then
  redis.call('HSET', K.job, 'status', 'canceled', 'completed_at', A.now)
  move(job, K.running, K.canceled)
  emit(job, 'job.canceled', A.now)
  retain(job, A.retention_s)
  return 'canceled'
end
-- Keeps its attempts (the next start counts another) and its place in the queue.
redis.call('HSET', K.job, 'status', 'queued', 'progress_step', 0)
redis.call('HDEL', K.job, 'lease_until', 'worker', 'started_at')
move(job, K.running, K.queued)
redis.call('ZADD', K.queue, job.seq, job.id)
redis.call('LPUSH', K.broker, A.broker_message)
return 'requeued'
""",
)

STORE_SCRIPTS = (CREATE, START, PROGRESS, POSITION, RENEW, FINISH, CANCEL, REQUEUE)
