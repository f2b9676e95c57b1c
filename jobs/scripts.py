"""The job store's Lua scripts: every transition of a job, and every "which job next", each
one atomic.

Each script names its KEYS and ARGV (``jobs/lua.py`` puts them in a header and binds them to
``K.<name>`` / ``A.<name>``). ``PRELUDE`` holds what several scripts share: reading the job,
moving it between status indexes, releasing its quota, making it pending or taking it out of
the scheduler, and recording an event — in the job's history (read by ``/events``), in its
webhook outbox when its filter wants it, and announced on pub/sub — in the same step as the
state it describes (an event exists iff its state does).

**The scheduler** (docs/scheduling.md). A model's pending jobs wait in one sorted set,
``pending``, ordered by score = band × 1e12 + S: the band is the priority (high 0, normal 1,
low 2: lower runs first) and S the tenant's start tag in Start-time Fair Queuing — a new job
gets S = max(V, F), V being the band's virtual time (the S of the job last dispatched from
it) and F the tenant's finish tag, which then grows by 1 / weight. Tenants in a band are
served round-robin (weighted); a newcomer starts right after the job in service however long
the others' backlogs are. ``PICK`` takes the head — one ZRANGE decides "which job next" —
plus, for a model compiled with a static batch, up to batch − 1 compatible jobs. Jobs below
the top band are promoted a band after ``aging_s`` (``PROMOTE``): no starvation. The queue
position is the job's rank in ``pending``.

A job's tenant and API key are read from the job itself: per-tenant and per-key state lives
in fields of known keys (``Keys`` module docstring), so every script declares every key it
touches. Scripts a client reaches take the caller's tenant (``*`` = any) and answer a job of
another tenant exactly as a missing one. Answers are the values of the ``str`` enums in
``jobs/store.py``.
"""

from __future__ import annotations

from jobs.lua import Script
from jobs.stats import LUA as STATS_LUA

# The keys ``emit`` and ``retain`` touch: every script that records an event includes them.
OUTBOX = ("wh_pending", "wh_events", "wh_due", "wh_wake", "deliveries")
# The scheduler's keys of the job's model (``Keys.scheduling``).
SCHEDULING = ("pending", "vclock", "aging", "batchable", "batch_members", "picked", "waiting", "broker")

PRELUDE = r"""
local BAND = 1e12  -- a priority band's width in the pending score
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
-- A score as Redis must store it (Lua would print 14 digits and lose the tag's fraction).
local function fmt(score)
  return string.format('%.6f', score)
end
-- Keep a wake-up token in the model's Celery queue while jobs are pending and none waits.
local function wake(message)
  if redis.call('ZCARD', K.pending) > 0 and redis.call('LLEN', K.broker) == 0 then
    redis.call('LPUSH', K.broker, message)
  end
end
-- Make a job pending at `score` (its place in the scheduler's order), waiting since `since`
-- (default: now) and, when the model batches, findable by its batch class.
local function enqueue(id, score, band, class, now, since)
  redis.call('ZADD', K.pending, fmt(score), id)
  redis.call('ZADD', K.waiting, since or now, id)
  if band > 0 then redis.call('ZADD', K.aging, now, id) end
  if class ~= '' then
    local member = class .. '|' .. string.format('%024.6f', score) .. '|' .. id
    redis.call('ZADD', K.batchable, 0, member)
    redis.call('HSET', K.batch_members, id, member)
  end
end
-- Take a job out of the scheduler (picked, canceled, expired).
local function dequeue(id)
  redis.call('ZREM', K.pending, id)
  redis.call('ZREM', K.waiting, id)
  redis.call('ZREM', K.aging, id)
  local member = redis.call('HGET', K.batch_members, id)
  if member then
    redis.call('ZREM', K.batchable, member)
    redis.call('HDEL', K.batch_members, id)
  end
end
-- Record an event: in the job's history, announced, and in its webhook outbox if wanted.
local function emit(job, event, now)
  local n = redis.call('HINCRBY', K.job, 'event_seq', 1)
  local msg = 'msg_' .. job.id .. '_' .. n
  local flat = redis.call('HGETALL', K.job)
  local snapshot = {}
  for i = 1, #flat, 2 do snapshot[flat[i]] = flat[i + 1] end
  redis.call('HSET', K.wh_events, msg, cjson.encode({id=msg, type=event, timestamp=tonumber(now), job=snapshot}))
  redis.call('PUBLISH', A.events_channel, job.id .. ' ' .. msg .. ' ' .. event)
  if not job.webhook then return end
  local short = string.sub(event, 5)
  if job.filter then
    if not string.find(job.filter, '"' .. short .. '"', 1, true) then return end
  elseif short == 'progress' then
    return
  end
  if redis.call('RPUSH', K.wh_pending, msg) == 1 then redis.call('ZADD', K.wh_due, now, job.id) end
  if redis.call('LLEN', K.wh_wake) == 0 then redis.call('RPUSH', K.wh_wake, '1') end  -- wake a deliverer
end
-- A finished job (and its event history) expires after the retention period.
local function retain(job, seconds)
  redis.call('EXPIRE', K.job, seconds)
  redis.call('EXPIRE', K.wh_events, seconds)
  if job.webhook then redis.call('EXPIRE', K.deliveries, seconds) end
end
"""
PRELUDE += STATS_LUA  # observe() and count(): the transitions count outcomes and phase times

CREATE = Script(
    name="create",
    doc="new queued jobs in the scheduler, each if the model has room and the key its quota and rate "
    "(or, for one job, the job its idempotency key already names)",
    keys=(
        "jobs",
        "by_tenant",
        "queued",
        "queued_by_tenant",
        "idempotency",  # '' when the request has no Idempotency-Key (a single job only)
        "seq",
        "rate_limits",
        "active",
        "model",
        "model_workers",
        "models",
        "weights",
        *SCHEDULING,
    ),
    args=(
        "tenant",
        "key",  # the API key's prefix ('' = no quota: authentication is off)
        "model_name",
        "request_hash",
        "idempotency_ttl_s",
        "token",  # the broker message that wakes a worker
        "tokens_max",  # tokens that may wait in the model's queue
        "now",
        "rate_per_s",  # token bucket: refill rate ('0' = no rate limit) and size
        "burst",
        "max_active",  # '0' = no limit
        "max_backlog",  # '0' = no limit
        "max_wait_s",  # '0' = no limit
        "worker_stale_s",  # a worker silent this long is not counted
        "no_worker_s",  # '0' = accept jobs with no worker (scale from zero)
    ),
    varargs="per job: id, band (0 high, 1 normal, 2 low), batch class ('' = none), fields as JSON",
    varkeys="per job: its hash, in the order of the jobs in ARGV",
    prelude=PRELUDE,
    body=r"""
-- Answers {tokens, active, item, item, …}; an item is {'created', seq, queue rank} or
-- {'backlog' | 'no_worker' | 'quota' | 'rate', retry_after_s}; or {'exists', '<id> <hash>'}.
-- Nothing is written for a refused job.
if K.idempotency ~= '' then
  local rec = redis.call('GET', K.idempotency)
  if rec then return {'exists', rec} end
end
local now = tonumber(A.now)
local depth = redis.call('ZCARD', K.pending)
local live = redis.call('ZCOUNT', K.model_workers, now - tonumber(A.worker_stale_s), '+inf')
local gen = tonumber(redis.call('HGET', K.model, 'gen_ewma_s') or '0')
local active = 0
if A.key ~= '' then active = tonumber(redis.call('HGET', K.active, A.key) or '0') end
local rate, burst = tonumber(A.rate_per_s), tonumber(A.burst)
local tokens = -1
if rate > 0 and A.key ~= '' then
  local bucket = redis.call('HMGET', K.rate_limits, A.key .. ':tokens', A.key .. ':at')
  tokens = tonumber(bucket[1] or burst)
  tokens = math.min(burst, tokens + math.max(0, now - tonumber(bucket[2] or now)) * rate)
end
local weight = tonumber(redis.call('HGET', K.weights, A.tenant) or '1')
local function drain_s(jobs) -- how long `jobs` queued jobs take to start
  if live > 0 and gen > 0 then return jobs / live * gen end
  return 5
end
-- Why this job may not be created now (nil: it may).
local function refusal()
  if live == 0 and tonumber(A.no_worker_s) > 0 then
    local seen = tonumber(redis.call('HGET', K.model, 'worker_seen_at') or '0')
    if now - seen > tonumber(A.no_worker_s) then return {'no_worker', '30'} end
  end
  if tonumber(A.max_backlog) > 0 and depth >= tonumber(A.max_backlog) then
    return {'backlog', tostring(drain_s(depth - tonumber(A.max_backlog) + 1))}
  end
  if tonumber(A.max_wait_s) > 0 and live > 0 and gen > 0 and (depth + 1) / live * gen > tonumber(A.max_wait_s) then
    return {'backlog', tostring((depth + 1) / live * gen - tonumber(A.max_wait_s))}
  end
  if tonumber(A.max_active) > 0 and active >= tonumber(A.max_active) then
    return {'quota', tostring(math.max(gen, 1))}
  end
  if tokens >= 0 and tokens < 1 then return {'rate', tostring((1 - tokens) / rate)} end
  return nil
end
-- The job's place: its band, then its tenant's start tag in that band (fair queuing).
local function schedule(band)
  local v = tonumber(redis.call('HGET', K.vclock, 'V:' .. band) or '0')
  local tag = 'F:' .. band .. ':' .. A.tenant
  local start = math.max(v, tonumber(redis.call('HGET', K.vclock, tag) or '0'))
  redis.call('HSET', K.vclock, tag, fmt(start + 1 / weight))
  return band * BAND + start
end
local function create(job, id, band, class, fields)
  local seq = redis.call('INCR', K.seq)
  local score = schedule(band)
  local flat = {'seq', seq, 'band', band, 'sched_score', fmt(score), 'enqueued_at', A.now, 'batch_class', class}
  for name, value in pairs(cjson.decode(fields)) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  redis.call('HSET', job, unpack(flat))
  redis.call('ZADD', K.jobs, seq, id)
  redis.call('ZADD', K.queued, seq, id)
  local member = A.tenant .. '|' .. string.format('%016d', seq) .. '|' .. id
  redis.call('ZADD', K.by_tenant, 0, member)
  redis.call('ZADD', K.queued_by_tenant, 0, member)
  enqueue(id, score, band, class, A.now)
  depth = depth + 1
  if A.key ~= '' then active = redis.call('HINCRBY', K.active, A.key, 1) end
  if tokens >= 0 then tokens = tokens - 1 end
  return {'created', tostring(seq), redis.call('ZRANK', K.pending, id)}
end
local answers = {}
local made = false
for i = VARARGS_AT, #ARGV, 4 do
  local item = refusal()
  if not item then
    local job = KEYS[VARKEYS_AT + (i - VARARGS_AT) / 4]
    item = create(job, ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3])
    made = true
  end
  answers[#answers + 1] = item
end
if made then
  if tokens >= 0 then
    redis.call('HSET', K.rate_limits, A.key .. ':tokens', tostring(tokens), A.key .. ':at', A.now)
  end
  redis.call('SADD', K.models, A.model_name)
  if redis.call('HGET', K.model, 'paused') ~= '1' and redis.call('LLEN', K.broker) < tonumber(A.tokens_max) then
    redis.call('LPUSH', K.broker, A.token)
  end
  if K.idempotency ~= '' and answers[1][1] == 'created' then
    redis.call('SET', K.idempotency, ARGV[VARARGS_AT] .. ' ' .. A.request_hash, 'EX', tonumber(A.idempotency_ttl_s))
  end
end
local reply = {tostring(tokens), tostring(active)}
for _, item in ipairs(answers) do
  reply[#reply + 1] = item
end
return reply
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

PICK = Script(
    name="pick",
    doc="which job next: the head of the model's pending jobs, plus compatible ones for a static batch",
    keys=("model", *SCHEDULING),
    args=("now", "deadline", "batch_max", "class", "token"),  # class '' = start from the head
    prelude=PRELUDE,
    body=r"""
-- Answers {pending left, id, id, …} (no id: nothing to do, or the model is paused). The
-- picked jobs stay `queued` until the worker starts each (START); one it never starts goes
-- back to `pending` at its place after `deadline` (RESTORE, from the reconciler).
if redis.call('HGET', K.model, 'paused') == '1' then return {0} end
local ids = {}
local function take(id)
  dequeue(id)
  redis.call('ZADD', K.picked, A.deadline, id)
  ids[#ids + 1] = id
end
local class = A.class
if class == '' then
  local head = redis.call('ZRANGE', K.pending, 0, 0, 'WITHSCORES')
  if #head == 0 then return {0} end
  local score = tonumber(head[2])
  local band = math.floor((score + 1) / BAND)  -- (a promoted job sits just below its band's start)
  redis.call('HSET', K.vclock, 'V:' .. band, fmt(score - band * BAND))  -- the band's virtual time
  local member = redis.call('HGET', K.batch_members, head[1])
  take(head[1])
  if member and tonumber(A.batch_max) > 1 then class = string.match(member, '^([^|]*)|') end
end
if class ~= '' and #ids < tonumber(A.batch_max) then
  local mates = redis.call('ZRANGEBYLEX', K.batchable, '[' .. class .. '|', '(' .. class .. '}', 'LIMIT', 0,
    tonumber(A.batch_max) - #ids)
  for _, member in ipairs(mates) do take(string.match(member, '|([^|]*)$')) end
end
wake(A.token)
local reply = {redis.call('ZCARD', K.pending)}
for _, id in ipairs(ids) do reply[#reply + 1] = id end
return reply
""",
)

START = Script(
    name="start",
    doc="a picked queued job → running for one worker: attempt + 1 and a lease; or failed when out of attempts",
    keys=(
        "job",
        "queued",
        "queued_by_tenant",
        "running",
        "running_by_tenant",
        "failed",
        "failed_by_tenant",
        "active",
        "stats",
        *SCHEDULING,
        *OUTBOX,
    ),
    args=("worker", "now", "lease_until", "max_attempts", "retention_s", "events_channel"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'attempts', 'input', 'enqueued_at', 'created_at')
if not job.status then return {'missing', '0'} end
redis.call('ZREM', K.picked, job.id)
if job.status ~= 'queued' then return {job.status, job.attempts or '0'} end
dequeue(job.id)  -- normally PICK did; a job started by id leaves the scheduler here
local attempts = tonumber(job.attempts or '0')
if attempts >= tonumber(A.max_attempts) then
  local err = cjson.encode({type='max_attempts', message='gave up after ' .. attempts .. ' attempt(s); ' ..
    'the last one ended without a result (its worker died or lost its lease)'})
  redis.call('HSET', K.job, 'status', 'failed', 'completed_at', A.now, 'error', err)
  move(job, K.queued, K.queued_by_tenant, K.failed, K.failed_by_tenant)
  release(job)
  emit(job, 'job.failed', A.now)
  retain(job, A.retention_s)
  count(K.stats, 'failed:max_attempts')
  return {'max_attempts', tostring(attempts)}
end
attempts = attempts + 1
redis.call('HSET', K.job, 'status', 'running', 'attempts', attempts, 'worker', A.worker,
  'started_at', A.now, 'lease_until', A.lease_until, 'progress_step', 0)
move(job, K.queued, K.queued_by_tenant, K.running, K.running_by_tenant)
emit(job, 'job.started', A.now)
local waited = tonumber(A.now) - tonumber(job.enqueued_at or job.created_at or A.now)
observe(K.stats, 'queue_wait', waited)
return {'started', tostring(attempts), job.input, job.tenant, tostring(waited)}
""",
)

PROGRESS = Script(
    name="progress",
    doc="record a denoising step and renew the lease, for the attempt that holds the job",
    keys=("job", *OUTBOX),
    args=("attempt", "step", "lease_until", "now", "event_interval_s", "events_channel"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'attempts', 'cancel_requested', 'progress_event_at')
if job.status ~= 'running' or job.attempts ~= A.attempt then return 'lost' end
if job.cancel_requested == '1' then return 'cancel' end
if tonumber(A.now) - tonumber(job.progress_event_at or '0') >= tonumber(A.event_interval_s) then
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
    doc="a queued job's place in the scheduler's order (0 once picked; false when no longer queued)",
    keys=("job", "pending"),
    args=("id",),
    body=r"""
if redis.call('HGET', K.job, 'status') ~= 'queued' then return false end
return redis.call('ZRANK', K.pending, A.id) or 0
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
        "active",
        "model",
        "stats",
        *SCHEDULING,
        *OUTBOX,
    ),
    args=(
        "attempt",
        "source",
        "target",
        "now",
        "retention_s",
        "generation_s",  # '' = not a generation's end
        "storage_s",  # '' = nothing stored
        "outcome",  # the counter it adds to (jobs/stats.py job_outcome)
        "events_channel",
    ),
    varargs="field, value, … to set (outputs, error, generation_seconds)",
    prelude=PRELUDE,
    body=r"""
-- Answers 0 (not in `source`, or another attempt holds it) or {1, tenant, worker, created_at,
-- started_at} (for the transition's log line).
local job = fetch('status', 'attempts', 'progress_step', 'progress_total', 'created_at', 'worker', 'started_at')
if job.status ~= A.source then return 0 end
if A.attempt ~= '' and job.attempts ~= A.attempt then return 0 end
-- A succeeded job's progress reads total/total (workers don't write the last step).
local step = job.progress_step or '0'
if A.target == 'succeeded' then step = job.progress_total end
redis.call('HSET', K.job, 'status', A.target, 'completed_at', A.now, 'progress_step', step, unpack(ARGV, VARARGS_AT))
if A.source == 'queued' then
  dequeue(job.id)
  redis.call('ZREM', K.picked, job.id)
end
move(job, K.from_index, K.from_index_by_tenant, K.to_index, K.to_index_by_tenant)
release(job)
if A.generation_s ~= '' then  -- the model's recent generation and storage times (moving averages): ETAs
  local ewma = redis.call('HMGET', K.model, 'gen_ewma_s', 'store_ewma_s')
  local gen = tonumber(ewma[1] or A.generation_s)
  local store = tonumber(ewma[2] or A.storage_s) or 0
  redis.call('HSET', K.model, 'gen_ewma_s', tostring(0.8 * gen + 0.2 * tonumber(A.generation_s)),
    'store_ewma_s', tostring(0.8 * store + 0.2 * (tonumber(A.storage_s) or store)))
end
emit(job, 'job.' .. A.target, A.now)
retain(job, A.retention_s)
count(K.stats, A.outcome)
if A.target == 'succeeded' then
  observe(K.stats, 'generation', tonumber(A.generation_s))
  observe(K.stats, 'storage', tonumber(A.storage_s))
  observe(K.stats, 'end_to_end', tonumber(A.now) - tonumber(job.created_at or A.now))
end
return {1, job.tenant, job.worker or '', job.created_at or '', job.started_at or ''}
""",
)

CANCEL = Script(
    name="cancel",
    doc="queued → canceled at once; running → flag it and announce it to the workers",
    keys=(
        "job",
        "queued",
        "queued_by_tenant",
        "canceled",
        "canceled_by_tenant",
        "active",
        "stats",
        *SCHEDULING,
        *OUTBOX,
    ),
    args=("tenant", "now", "retention_s", "cancel_channel", "events_channel"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status')
if not job.status or not visible(job) then return 'missing' end
if job.status == 'queued' then
  redis.call('HSET', K.job, 'status', 'canceled', 'completed_at', A.now)
  dequeue(job.id)
  redis.call('ZREM', K.picked, job.id)
  move(job, K.queued, K.queued_by_tenant, K.canceled, K.canceled_by_tenant)
  release(job)
  emit(job, 'job.canceled', A.now)
  retain(job, A.retention_s)
  count(K.stats, 'canceled')
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
    doc="running → pending again at its place (or canceled), when its lease expired or when the attempt "
    "holding it gives it back",
    keys=(
        "job",
        "running",
        "running_by_tenant",
        "queued",
        "queued_by_tenant",
        "canceled",
        "canceled_by_tenant",
        "active",
        "stats",
        *SCHEDULING,
        *OUTBOX,
    ),
    args=("now", "retention_s", "token", "attempt", "events_channel"),  # attempt '' = only if the lease expired
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'lease_until', 'cancel_requested', 'attempts', 'sched_score', 'band', 'batch_class')
if job.status ~= 'running' then return 'held' end
if A.attempt == '' and tonumber(job.lease_until or '0') >= tonumber(A.now) then return 'held' end
if A.attempt ~= '' and job.attempts ~= A.attempt then return 'held' end
if job.cancel_requested == '1' then
  redis.call('HSET', K.job, 'status', 'canceled', 'completed_at', A.now)
  move(job, K.running, K.running_by_tenant, K.canceled, K.canceled_by_tenant)
  release(job)
  emit(job, 'job.canceled', A.now)
  retain(job, A.retention_s)
  count(K.stats, 'canceled')
  return 'canceled'
end
-- Keeps its attempts (the next start counts another) and its place in the scheduler's order.
redis.call('HSET', K.job, 'status', 'queued', 'progress_step', 0, 'enqueued_at', A.now)
redis.call('HDEL', K.job, 'lease_until', 'worker', 'started_at')
move(job, K.running, K.running_by_tenant, K.queued, K.queued_by_tenant)
enqueue(job.id, tonumber(job.sched_score or '0'), tonumber(job.band or '1'), job.batch_class or '', A.now)
wake(A.token)
return 'requeued'
""",
)

RESTORE = Script(
    name="restore",
    doc="a job picked but never started (its worker died in between) goes back to its place",
    keys=("job", *SCHEDULING),
    args=("now", "token"),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'sched_score', 'band', 'batch_class', 'enqueued_at')
redis.call('ZREM', K.picked, job.id or '')
if job.status ~= 'queued' or redis.call('ZSCORE', K.pending, job.id) then return 0 end
enqueue(job.id, tonumber(job.sched_score or '0'), tonumber(job.band or '1'), job.batch_class or '', A.now,
  job.enqueued_at)
wake(A.token)
return 1
""",
)

PROMOTE = Script(
    name="promote",
    doc="a pending job waiting longer than the aging limit moves up a band, to the front of the new band",
    keys=("job", *SCHEDULING),
    args=("now",),
    prelude=PRELUDE,
    body=r"""
local job = fetch('status', 'band', 'batch_class', 'enqueued_at')
if job.status ~= 'queued' or not redis.call('ZSCORE', K.pending, job.id) then
  redis.call('ZREM', K.aging, job.id or '')
  return 0
end
local band = math.max(tonumber(job.band or '1') - 1, 0)
-- just before the band's virtual time: ahead of every job waiting in it
local score = band * BAND + tonumber(redis.call('HGET', K.vclock, 'V:' .. band) or '0') - 0.5
dequeue(job.id)
enqueue(job.id, score, band, job.batch_class or '', A.now, job.enqueued_at)
redis.call('HSET', K.job, 'band', band, 'sched_score', fmt(score))
return 1
""",
)

WAKE = Script(
    name="wake",
    doc="a token in the model's queue when jobs are pending and none waits (a lost one, a resume)",
    keys=("model", *SCHEDULING),
    args=("token",),
    prelude=PRELUDE,
    body=r"""
if redis.call('HGET', K.model, 'paused') == '1' then return 0 end
wake(A.token)
return 1
""",
)

STORE_SCRIPTS = (CREATE, READ, PICK, START, PROGRESS, POSITION, RENEW, FINISH, CANCEL, REQUEUE, RESTORE, PROMOTE, WAKE)
