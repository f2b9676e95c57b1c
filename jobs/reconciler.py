"""The reconciler: finishes what crashes and outages leave behind. One is active at a time
across the fleet (a Redis lock); every worker process runs a candidate.

Each tick, as the leader:
1. running jobs whose lease expired (their worker died or hung) go back to their place in
   the scheduler, in one script; the next start counts as another attempt (``max_attempts``
   is enforced when a worker starts it);
2. running jobs past ``timeout_seconds`` (plus one lease of grace) fail as ``timeout``;
3. queued jobs past ``ttl_seconds`` fail as ``expired``;
4. per model: jobs picked but never started (their worker died in between) go back to their
   place; pending jobs that waited ``DQ_PRIORITY_AGING_S`` in their band move up one; and a
   wake-up token is restored when jobs are pending and none waits (a token lost with a
   killed worker, or deleted). Tokens carry no job, so a lost or duplicated one never loses
   or duplicates a job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from jobs.connections import as_text
from jobs.lua import BoundScript, Script
from jobs.models import JobStatus
from jobs.store import ANY_TENANT, JobStore, RequeueOutcome

log = logging.getLogger("dq.reconciler")
QUEUED_SCAN = 200

LEAD = Script(
    name="lead",
    doc="take the reconciler lock if it is free, keep it if it is ours (1), else 0",
    keys=("lock",),
    args=("owner", "ttl_ms"),
    body=r"""
local holder = redis.call('GET', K.lock)
if holder == false then
  redis.call('SET', K.lock, A.owner, 'PX', A.ttl_ms)
  return 1
end
if holder == A.owner then
  redis.call('PEXPIRE', K.lock, A.ttl_ms)
  return 1
end
return 0
""",
)


@dataclass
class TickReport:
    requeued: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return any((self.requeued, self.canceled, self.timed_out, self.expired, self.restored, self.promoted))


class Reconciler:
    def __init__(
        self,
        store: JobStore,
        owner: str,
        *,
        interval_s: float = 2.0,
        lease_s: float = 30.0,
        aging_s: float = 600.0,
    ) -> None:
        self.store = store
        self.owner = owner
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.aging_s = aging_s
        self._lead = BoundScript(store.redis, LEAD)

    def lead(self) -> bool:
        ttl_ms = int(max(3 * self.interval_s, 5.0) * 1000)
        answer = self._lead({"lock": self.store.keys.reconciler_lock()}, {"owner": self.owner, "ttl_ms": ttl_ms})
        return int(answer) == 1

    def tick(self, now: float | None = None) -> TickReport:
        now = time.time() if now is None else now
        report = TickReport()
        self._running(now, report)
        self._queued(now, report)
        self._scheduling(now, report)
        if report.any():
            log.info("reconciler: %s", report)
        return report

    def _running(self, now: float, report: TickReport) -> None:
        for job_id in self.store.ids_with_status(JobStatus.RUNNING):
            record = self.store.get(job_id, tenant=ANY_TENANT)
            if record is None or record.status is not JobStatus.RUNNING:
                continue
            timeout = float(record.input.get("timeout_seconds") or 0)
            if timeout and record.started_at is not None and now > record.started_at + timeout + self.lease_s:
                message = f"ran longer than timeout_seconds={timeout:g}"
                if self.store.fail(job_id, record.model, None, "timeout", message):
                    report.timed_out.append(job_id)
                continue
            outcome = self.store.requeue_if_lease_expired(job_id, record.model, now)
            if outcome is RequeueOutcome.REQUEUED:
                report.requeued.append(job_id)
            elif outcome is RequeueOutcome.CANCELED:
                report.canceled.append(job_id)

    def _scheduling(self, now: float, report: TickReport) -> None:
        for model in self.store.models_with_jobs():
            report.restored += self.store.restore_picked(model, now)
            report.promoted += self.store.promote_aged(model, self.aging_s, now)
            self.store.wake(model)

    def _queued(self, now: float, report: TickReport) -> None:
        ids = self.store.ids_with_status(JobStatus.QUEUED, limit=QUEUED_SCAN)  # oldest first
        if not ids:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.store.keys.job(job_id), "created_at", "input", "model")
        for job_id, (created, raw_input, model) in zip(ids, pipe.execute(), strict=True):
            if created is None or raw_input is None:
                continue
            ttl = float(json.loads(raw_input).get("ttl_seconds") or 0)
            if ttl and now > float(created) + ttl:
                message = f"waited in the queue longer than ttl_seconds={ttl:g}"
                if self.store.fail_queued(job_id, as_text(model), "expired", message):
                    report.expired.append(job_id)


class ReconcilerThread(threading.Thread):
    """Runs a reconciler candidate next to a worker: ticks only while it holds the lock."""

    def __init__(self, reconciler: Reconciler) -> None:
        super().__init__(name="dq-reconciler", daemon=True)
        self.reconciler = reconciler
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.reconciler.interval_s):
            try:
                if self.reconciler.lead():
                    self.reconciler.tick()
            except redis.RedisError as exc:
                log.warning("reconciler: %s", exc)
            except Exception:  # never let the thread die silently
                log.exception("reconciler tick failed")

    def stop(self) -> None:
        self._stop_event.set()
