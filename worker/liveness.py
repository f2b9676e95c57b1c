"""What tells the fleet this worker is alive, and what keeps its jobs' leases: the jobs it
holds (``InFlight``) and the heartbeat thread.

A lease is renewed only while its job shows signs of life: generation reports every step
(``InFlight.beat``), and storage (encode, upload, commit) has a deadline of its own. A job
whose generation made no step for its stall limit is *stalled* — a wedged NeuronCore never
returns from the runtime call — and the heartbeat hands it to ``on_stall``: the worker gives
the job back to the queue and exits, and its launcher starts a fresh process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import redis

from jobs.store import JobStore
from jobs.workers import WorkerInfo, WorkerRegistry, heartbeat_ttl_s

log = logging.getLogger("dq.worker")


@dataclass(frozen=True)
class Holding:
    """One job this process holds a lease on."""

    job_id: str
    model: str
    attempt: int
    stall_after_s: float  # generation may go this long without a step
    last_beat: float = field(default_factory=time.monotonic)
    generating: bool = True  # False once handed to storage (which has its own deadline)

    def stalled(self, now: float) -> bool:
        return self.generating and now - self.last_beat > self.stall_after_s


class InFlight:
    """The jobs this process holds, with their last sign of life; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Holding] = {}

    def add(self, job_id: str, model: str, attempt: int, stall_after_s: float) -> None:
        with self._lock:
            self._jobs[job_id] = Holding(job_id, model, attempt, stall_after_s)

    def beat(self, job_id: str) -> None:
        """A denoising step finished: the generation is alive."""
        with self._lock:
            held = self._jobs.get(job_id)
            if held is not None:
                self._jobs[job_id] = replace(held, last_beat=time.monotonic())

    def finishing(self, job_id: str) -> None:
        """Generation is over; storage renews the lease until it commits."""
        with self._lock:
            held = self._jobs.get(job_id)
            if held is not None:
                self._jobs[job_id] = replace(held, generating=False)

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._jobs

    def snapshot(self) -> list[Holding]:
        with self._lock:
            return list(self._jobs.values())


StallHandler = Callable[[Holding], None]

POKE_GAP_S = 0.1


class Heartbeat(threading.Thread):
    """Every ``interval_s`` (and at once when ``poke``d): publish this worker's state, renew
    the leases of jobs that show signs of life, and hand a stalled one to ``on_stall``."""

    def __init__(
        self,
        registry: WorkerRegistry,
        info: WorkerInfo,
        store: JobStore,
        in_flight: InFlight,
        on_stall: StallHandler,
        *,
        interval_s: float,
        lease_s: float,
    ) -> None:
        super().__init__(name="dq-heartbeat", daemon=True)
        self.registry = registry
        self.info = info
        self.store = store
        self.in_flight = in_flight
        self.on_stall = on_stall
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.ttl_s = heartbeat_ttl_s(interval_s)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._published_state = ""

    def beat(self) -> None:
        """Publish the state and renew live leases; a Redis outage is logged, not raised."""
        now = time.monotonic()
        try:
            self.publish()
            for held in self.in_flight.snapshot():
                if not held.stalled(now):
                    self.store.renew(held.job_id, held.attempt, lease_s=self.lease_s)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def publish(self) -> None:
        self._published_state = self.info.state
        self.registry.publish(self.info, ttl_s=self.ttl_s)

    def check_stalls(self) -> None:
        now = time.monotonic()
        for held in self.in_flight.snapshot():
            if held.stalled(now):
                self.on_stall(held)

    def poke(self) -> None:
        """Publish now (a state change), not at the next interval."""
        self._wake.set()

    def run(self) -> None:
        self.beat()
        next_beat = time.monotonic() + self.interval_s
        while not self._stopping.is_set():
            poked = self._wake.wait(max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
            if self._stopping.is_set():
                return
            if poked and time.monotonic() < next_beat:
                self._publish_change()
                continue
            self.check_stalls()
            self.beat()
            next_beat = time.monotonic() + self.interval_s

    def _publish_change(self) -> None:
        """A poke: publish if the state changed, at most every ``POKE_GAP_S`` (a worker running a
        backlog flips busy / ready per job; views need the state, not every flip)."""
        if self.info.state != self._published_state:
            try:
                self.publish()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
        self._stopping.wait(POKE_GAP_S)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
