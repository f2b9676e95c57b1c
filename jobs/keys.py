"""Every Redis key diffusion-queue uses, built here and nowhere else.

``dq:job:<id>``            hash   the job: the source of truth for its state
``dq:jobs``                zset   every job id, score = creation sequence (newest = highest)
``dq:jobs:<status>``       zset   job ids per status, same score (listing with a filter)
``dq:bytenant``            zset   ``<tenant>|<seq, 16 digits>|<id>`` per job, all scores 0: one
                                  tenant's jobs, newest first, by ZREVRANGEBYLEX (listing)
``dq:bytenant:<status>``   zset   the same per status
``dq:pending:<model>``     zset   jobs waiting to be picked, score = the scheduler's order
                                  (priority band × 1e12 + the tenant's fair-share start tag):
                                  ZRANGE 0 0 is "which job next", ZRANK the queue position
``dq:vt:<model>``          hash   fair-share clocks: ``V:<band>`` (the band's virtual time) and
                                  ``F:<band>:<tenant>`` (the tenant's next finish tag)
``dq:aging:<model>``       zset   pending jobs below the top band, score = when they entered it
``dq:batchable:<model>``   zset   ``<batch class>|<score>|<id>`` (scores 0): compatible jobs, in
                                  order, for a model compiled with a static batch > 1
``dq:batchmember:<model>`` hash   job id -> its member in ``dq:batchable:<model>``
``dq:picked:<model>``      zset   jobs a worker picked but has not started, score = deadline
``dq:models``              set    every model that ever had a job (the reconciler's list)
``dq:weights``             hash   tenant -> fair-share weight (default 1)
``dq:seq``                 string creation sequence counter
``dq:idem:<sha256>``       string idempotency record ``<job id> <request sha256>``; the digest is
                                  of ``<tenant>`` NUL ``<Idempotency-Key>``: keys are per tenant
``dq:apikey:<prefix>``     hash   an API key's record and the SHA-256 of the key (``jobs/tenants.py``)
``dq:apikeys``             zset   API key prefixes, score = creation time
``dq:tenant:<name>``       hash   a tenant's webhook secret (and the previous one while rotating)
``dq:ratelimits``          hash   token buckets: ``<key prefix>:tokens`` and ``<key prefix>:at``
``dq:active``              hash   ``<key prefix>`` -> jobs of that key queued or running (quota)
``dq:model:<model>``       hash   per model: ``gen_ewma_s`` (recent generation time), ``worker_seen_at``
``dq:stats:<model>``       hash   per model: outcome counters and phase histograms (``jobs/stats.py``)
``dq:waiting:<model>``     zset   pending jobs, score = when they entered the queue (oldest age)
``dq:workers:<model>``     zset   the model's worker names, score = last heartbeat time
``dq:worker:<name>``       string a worker's heartbeat, JSON (expires when the worker dies)
``dq:workers``             zset   worker names, score = last heartbeat time
``dq:reconciler``          string lock held by the one active reconciler
``dq:cancel``              pub/sub channel: ids of running jobs whose cancel was requested
``dq:wh:pending:<job id>`` list   webhook message ids of a job not yet delivered, in order
``dq:wh:events:<job id>``  hash   webhook message id -> event (type, timestamp, job snapshot)
``dq:wh:due``              zset   job ids whose first pending message is due, score = due time
``dq:wh:wake``             list   one token while events wait: a blocked deliverer wakes at once
``dq:wh:attempts:<job id>`` hash  webhook message id -> attempts made at it since it was queued
``dq:wh:stats``             hash   webhook attempt outcomes and delivery latency (``jobs/stats.py``)
``dq:deliveries:<job id>`` list   webhook delivery attempts of a job (JSON, oldest first)
Celery queue per model: ``gen.<model>``, kombu's Redis list. It carries *tokens*, not jobs: a
token wakes an idle worker, which then picks "which job next" from ``dq:pending:<model>``
(``jobs/scripts.py`` ``PICK``) until nothing is left; the store's scripts keep a token there
while jobs are pending (``jobs/transport.py``).

Per-tenant and per-key state lives in *fields* of a few known keys (``dq:bytenant``,
``dq:ratelimits``, ``dq:active``), never in keys named after data: every script can then
declare every key it touches before it knows whose job it will touch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "dq"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def jobs_by_status(self, status: str) -> str:
        return f"{self.prefix}:jobs:{status}"

    def by_tenant(self, status: str | None = None) -> str:
        return f"{self.prefix}:bytenant" + (f":{status}" if status else "")

    def pending(self, model: str) -> str:
        return f"{self.prefix}:pending:{model}"

    def vclock(self, model: str) -> str:
        return f"{self.prefix}:vt:{model}"

    def aging(self, model: str) -> str:
        return f"{self.prefix}:aging:{model}"

    def batchable(self, model: str) -> str:
        return f"{self.prefix}:batchable:{model}"

    def batch_members(self, model: str) -> str:
        return f"{self.prefix}:batchmember:{model}"

    def picked(self, model: str) -> str:
        return f"{self.prefix}:picked:{model}"

    def models(self) -> str:
        return f"{self.prefix}:models"

    def weights(self) -> str:
        return f"{self.prefix}:weights"

    def scheduling(self, model: str) -> dict[str, str]:
        """The scheduler's keys of one model, by the names its scripts use."""
        return {
            "pending": self.pending(model),
            "vclock": self.vclock(model),
            "aging": self.aging(model),
            "batchable": self.batchable(model),
            "batch_members": self.batch_members(model),
            "picked": self.picked(model),
            "waiting": self.waiting(model),
            "broker": celery_queue(model),
        }

    def seq(self) -> str:
        return f"{self.prefix}:seq"

    def idempotency(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()
        return f"{self.prefix}:idem:{digest}"

    def api_key(self, prefix: str) -> str:
        return f"{self.prefix}:apikey:{prefix}"

    def api_keys(self) -> str:
        return f"{self.prefix}:apikeys"

    def tenant(self, name: str) -> str:
        return f"{self.prefix}:tenant:{name}"

    def rate_limits(self) -> str:
        return f"{self.prefix}:ratelimits"

    def active(self) -> str:
        return f"{self.prefix}:active"

    def model(self, model: str) -> str:
        return f"{self.prefix}:model:{model}"

    def stats(self, model: str) -> str:
        return f"{self.prefix}:stats:{model}"

    def waiting(self, model: str) -> str:
        return f"{self.prefix}:waiting:{model}"

    def webhook_stats(self) -> str:
        return f"{self.prefix}:wh:stats"

    def model_workers(self, model: str) -> str:
        return f"{self.prefix}:workers:{model}"

    def events_channel(self) -> str:
        """Pub/sub channel announcing every job event: ``<job id> <event id> <type>``."""
        return f"{self.prefix}:events"

    def cancel_channel(self) -> str:
        """Pub/sub channel on which a running job's cancel is announced to the workers."""
        return f"{self.prefix}:cancel"

    def reconciler_lock(self) -> str:
        return f"{self.prefix}:reconciler"

    def webhook_pending(self, job_id: str) -> str:
        return f"{self.prefix}:wh:pending:{job_id}"

    def webhook_events(self, job_id: str) -> str:
        return f"{self.prefix}:wh:events:{job_id}"

    def webhook_due(self) -> str:
        return f"{self.prefix}:wh:due"

    def webhook_attempts(self, job_id: str) -> str:
        return f"{self.prefix}:wh:attempts:{job_id}"

    def webhook_wake(self) -> str:
        return f"{self.prefix}:wh:wake"

    def deliveries(self, job_id: str) -> str:
        return f"{self.prefix}:deliveries:{job_id}"

    def outbox(self, job_id: str) -> dict[str, str]:
        """The webhook outbox of one job, by the names every script that touches it uses
        (``jobs/scripts.py`` writes events; ``webhooks/outbox.py`` delivers them)."""
        return {
            "wh_pending": self.webhook_pending(job_id),
            "wh_events": self.webhook_events(job_id),
            "wh_attempts": self.webhook_attempts(job_id),
            "wh_due": self.webhook_due(),
            "wh_wake": self.webhook_wake(),
            "deliveries": self.deliveries(job_id),
        }

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def workers(self) -> str:
        return f"{self.prefix}:workers"


def celery_queue(model: str) -> str:
    """The Celery queue a model's jobs travel on; a worker consumes only its model's queue."""
    return f"gen.{model}"
