"""The job store's Lua scripts: every transition of a job, each one atomic.

Each script names its KEYS and ARGV (``jobs/lua.py`` puts them in a header and binds them to
``K.<name>`` / ``A.<name>``). ``PRELUDE`` holds what several scripts share: reading the job,
moving it between status indexes, releasing its quota, and writing a webhook event into the
job's outbox in the same step as the state it describes (an event exists iff its state does).
The outbox keys carry the same names here and in ``webhooks/outbox.py`` (``Keys.outbox``).

A job's tenant and API key are read from the job itself: per-tenant and per-key state lives
in fields of known keys (``Keys`` module docstring), so no script needs a key it could only
name after reading the job. Scripts a client reaches take the caller's tenant (``*`` = any,
for admins and the workers) and answer a job of another tenant exactly as a missing one.

Answers are the values of the ``str`` enums in ``jobs/store.py``.
"""

from __future__ import annotations

from jobs.lua import Script

# The keys ``emit`` and ``retain`` touch: every script that ends a state includes them.
OUTBOX = ("wh_pending", "wh_events", "wh_due", "wh_wake", "deliveries")

PRELUDE = r"""
-- The named fields of the job, with its id, owner and webhook settings, in one HMGET.
local function fetch(...)
  local names = {...}
  local values = redis.call('HMGET', K.job, 'id', 'tenant', 'key', 'seq', 'webhook', 'webhook_events_filter',
    unpack(names))
  local job = {id=values[1], tenant=values[2] or '', key=values[3] or '', seq=values[4], webhook=values[5],
    filter=values[6]}
  for i, name in ipairs(names) do job[name] = values[i + 6] end
  return job
end
-- Whether the caller (A.tenant; '*' = any) may see the job.
local function visible(job)
  return A.tenant == '*' or job.tenant == A.tenant
end
-- The job's member in the by-tenant (lexically ordered) indexes.
local function lex(job)
  return job.tenant .. '|' .. string.format('%016d', tonumber(job.seq)) .. '|' .. job.id
end
-- From one status to another in both indexes (by creation order, and by tenant).
local function move(job, from_index, from_lex, to_index, to_lex)
  redis.call('ZREM', from_index, job.id)
  redis.call('ZADD', to_index, job.seq, job.id)
  local member = lex(job)
  redis.call('ZREM', from_lex, member)
  redis.call('ZADD', to_lex, 0, member)
end
-- A job ended: it no longer counts against its key's max_active_jobs.
local function release(job)
  if job.key ~= '' then redis.call('HINCRBY', K.active, job.key, -1) end
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
    doc="a new queued job and its broker message, if the model has room and the key its quota "
    "(or the job an idempotency key already names)",
    keys=(
        "job",
        "jobs",
        "by_tenant",
        "queued",
        "queued_by_tenant",
        "queue",
        "broker",
        "idempotency",
        "seq",
        "rate_limits",
        "active",
        "model",
        "model_workers",
    ),
    args=(
        "id",
        "tenant",
        "key",  # the API key's prefix ('' = no quota: authentication is off)
        "request_hash",
        "idempotency_ttl_s",
        "broker_message",
        "now",
        "rate_per_s",  # token bucket: refill rate ('0' = no rate limit) and size
        "burst",
        "max_active",  # '0' = no limit
        "max_backlog",  # '0' = no limit
        "max_wait_s",  # '0' = no limit
        "worker_stale_s",  # a worker silent this long is not counted
        "no_worker_s",  # '0' = accept jobs with no worker (scale from zero)
    ),
    varargs="field, value, … of the new job hash",
    body=r"""
-- Answers {'exists', '<id> <hash>'} | {'backlog' | 'no_worker' | 'quota' | 'rate', retry_after_s,
-- tokens} | {'created', seq, queue rank, tokens, active}. Nothing is written unless created.
-- K.idempotency is '' when the request has no Idempotency-Key.
if K.idempotency ~= '' then
  local rec = redis.call('GET', K.idempotency)
  if rec then return {'exists', rec} end
end
local now = tonumber(A.now)
-- 1. The model has room: backlog and estimated wait (backlog / live workers × generation time).
local depth = redis.call('ZCARD', K.queue)
local live = redis.call('ZCOUNT', K.model_workers, now - tonumber(A.worker_stale_s), '+inf')
local gen = tonumber(redis.call('HGET', K.model, 'gen_ewma_s') or '0')
if live == 0 and tonumber(A.no_worker_s) > 0 then
  local seen = tonumber(redis.call('HGET', K.model, 'worker_seen_at') or '0')
  if now - seen > tonumber(A.no_worker_s) then return {'no_worker', '30', '0'} end
end
local function drain_s(jobs) -- how long `jobs` queued jobs take to start
  if live > 0 and gen > 0 then return jobs / live * gen end
  return 5
end
if tonumber(A.max_backlog) > 0 and depth >= tonumber(A.max_backlog) then
  return {'backlog', tostring(drain_s(depth - tonumber(A.max_backlog) + 1)), '0'}
end
if tonumber(A.max_wait_s) > 0 and live > 0 and gen > 0 then
  local wait = (depth + 1) / live * gen
  if wait > tonumber(A.max_wait_s) then return {'backlog', tostring(wait - tonumber(A.max_wait_s)), '0'} end
end
-- 2. The key's quota of jobs queued or running.
local active = 0
if A.key ~= '' then active = tonumber(redis.call('HGET', K.active, A.key) or '0') end
if tonumber(A.max_active) > 0 and active >= tonumber(A.max_active) then
  return {'quota', tostring(math.max(gen, 1)), '0'}
end
-- 3. The key's rate: a token bucket (last, so a refused request costs no token).
local tokens = -1
local rate, burst = tonumber(A.rate_per_s), tonumber(A.burst)
if rate > 0 and A.key ~= '' then
  local bucket = redis.call('HMGET', K.rate_limits, A.key .. ':tokens', A.key .. ':at')
  tokens = tonumber(bucket[1] or burst)
  tokens = math.min(burst, tokens + math.max(0, now - tonumber(bucket[2] or now)) * rate)
  if tokens < 1 then return {'rate', tostring((1 - tokens) / rate), tostring(tokens)} end
  tokens = tokens - 1
  redis.call('HSET', K.rate_limits, A.key .. ':tokens', tostring(tokens), A.key .. ':at', A.now)
end
-- 4. The job, its indexes and its message.
local seq = redis.call('INCR', K.seq)
redis.call('HSET', K.job, 'seq', seq, unpack(ARGV, VARARGS_AT))
redis.call('ZADD', K.jobs, seq, A.id)
redis.call('ZADD', K.queued, seq, A.id)
local member = A.tenant .. '|' .. string.format('%016d', seq) .. '|' .. A.id
redis.call('ZADD', K.by_tenant, 0, member)
redis.call('ZADD', K.queued_by_tenant, 0, member)
redis.call('ZADD', K.queue, seq, A.id)
redis.call('LPUSH', K.broker, A.broker_message)
if A.key ~= '' then active = redis.call('HINCRBY', K.active, A.key, 1) end
if K.idempotency ~= '' then
  redis.call('SET', K.idempotency, A.id .. ' ' .. A.request_hash, 'EX', tonumber(A.idempotency_ttl_s))
end
return {'created', tostring(seq), redis.call('ZRANK', K.queue, A.id), tostring(tokens), tostring(active)}
""",
)

READ = Script(
    name="read",
    doc="the job hash, if the caller's tenant may see it (false otherwise, as for a missing job)",
    keys=("job",),
    args=("tenant",),
    body=r"""
local owner = redis.call('HGET', K.job, 'tenant')
if not owner or (A.tenant ~= '*' and owner ~= A.tenant) then return false end
return redis.call('HGETALL', K.job)
""",
)

START = Script(
    name="start",
    doc="queued → running for one worker: attempt + 1 and a lease; or failed when out of attempts",
    keys=(
        "job",
        "queued",
        "queued_by_tenant",
        "running",
        "running_by_tenant",
        "failed",
        "failed_by_tenant",
        "queue",
        "active",
        *OUTBOX,
    ),
    args=("worker", "now", "lease_until", "max_attempts", "retention_s"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'attempts', 'input')
if not job.status then return {'missing', '0'} end
if job.status ~= 'queued' then return {job.status, job.attempts or '0'} end
local attempts = tonumber(job.attempts or '0')
redis.call('ZREM', K.queue, job.id)
if attempts >= tonumber(A.max_attempts) then
  local err = cjson.encode({type='max_attempts', message='gave up after ' .. attempts .. ' attempt(s); ' ..
    'the last one ended without a result (its worker died or lost its lease)'})
  redis.call('HSET', K.job, 'status', 'failed', 'completed_at', A.now, 'error', err)
  move(job, K.queued, K.queued_by_tenant, K.failed, K.failed_by_tenant)
  release(job)
  emit(job, 'job.failed', A.now)
  retain(job, A.retention_s)
  return {'max_attempts', tostring(attempts)}
end
attempts = attempts + 1
redis.call('HSET', K.job, 'status', 'running', 'attempts', attempts, 'worker', A.worker,
  'started_at', A.now, 'lease_until', A.lease_until, 'progress_step', 0)
move(job, K.queued, K.queued_by_tenant, K.running, K.running_by_tenant)
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
    keys=(
        "job",
        "from_index",
        "from_index_by_tenant",
        "to_index",
        "to_index_by_tenant",
        "queue",
        "active",
        "model",
        *OUTBOX,
    ),
    args=("attempt", "source", "target", "now", "retention_s", "generation_s"),  # generation_s '' = none
    varargs="field, value, … to set (outputs, error, generation_seconds)",
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'attempts', 'progress_step', 'progress_total')
if job.status ~= A.source then return 0 end
if A.attempt ~= '' and job.attempts ~= A.attempt then return 0 end
-- A succeeded job's progress reads total/total (workers don't write the last step).
local step = job.progress_step or '0'
if A.target == 'succeeded' then step = job.progress_total end
redis.call('HSET', K.job, 'status', A.target, 'completed_at', A.now, 'progress_step', step, unpack(ARGV, VARARGS_AT))
if A.source == 'queued' then redis.call('ZREM', K.queue, job.id) end
move(job, K.from_index, K.from_index_by_tenant, K.to_index, K.to_index_by_tenant)
release(job)
if A.generation_s ~= '' then  -- the model's recent generation time (moving average), for wait estimates
  local ewma = tonumber(redis.call('HGET', K.model, 'gen_ewma_s') or A.generation_s)
  redis.call('HSET', K.model, 'gen_ewma_s', tostring(0.8 * ewma + 0.2 * tonumber(A.generation_s)))
end
emit(job, 'job.' .. A.target, A.now)
retain(job, A.retention_s)
return 1
""",
)

CANCEL = Script(
    name="cancel",
    doc="queued → canceled at once; running → flag it and announce it to the workers",
    keys=("job", "queued", "queued_by_tenant", "canceled", "canceled_by_tenant", "queue", "active", *OUTBOX),
    args=("tenant", "now", "retention_s", "cancel_channel"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status')
if not job.status or not visible(job) then return 'missing' end
if job.status == 'queued' then
  redis.call('HSET', K.job, 'status', 'canceled', 'completed_at', A.now)
  redis.call('ZREM', K.queue, job.id)
  move(job, K.queued, K.queued_by_tenant, K.canceled, K.canceled_by_tenant)
  release(job)
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
    keys=(
        "job",
        "running",
        "running_by_tenant",
        "queued",
        "queued_by_tenant",
        "canceled",
        "canceled_by_tenant",
        "queue",
        "broker",
        "active",
        *OUTBOX,
    ),
    args=("now", "retention_s", "broker_message", "attempt"),  # attempt '' = only if the lease expired
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'lease_until', 'cancel_requested', 'attempts')
if job.status ~= 'running' then return 'held' end
if A.attempt == '' and tonumber(job.lease_until or '0') >= tonumber(A.now) then return 'held' end
if A.attempt ~= '' and job.attempts ~= A.attempt then return 'held' end
if job.cancel_requested == '1' then
  redis.call('HSET', K.job, 'status', 'canceled', 'completed_at', A.now)
  move(job, K.running, K.running_by_tenant, K.canceled, K.canceled_by_tenant)
  release(job)
  emit(job, 'job.canceled', A.now)
  retain(job, A.retention_s)
  return 'canceled'
end
-- Keeps its attempts (the next start counts another) and its place in the queue.
redis.call('HSET', K.job, 'status', 'queued', 'progress_step', 0)
redis.call('HDEL', K.job, 'lease_until', 'worker', 'started_at')
move(job, K.running, K.running_by_tenant, K.queued, K.queued_by_tenant)
redis.call('ZADD', K.queue, job.seq, job.id)
redis.call('LPUSH', K.broker, A.broker_message)
return 'requeued'
""",
)

STORE_SCRIPTS = (CREATE, READ, START, PROGRESS, POSITION, RENEW, FINISH, CANCEL, REQUEUE)
