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
from collections import deque
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


class Activity:
    """When this process generated: busy time in total, the call in progress, and the share of
    the last ``window_s`` spent generating (the duty cycle its heartbeat publishes); thread-safe."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.clock = clock
        self.born = clock()
        self._lock = threading.Lock()
        self._spans: deque[tuple[float, float]] = deque()
        self._since: float | None = None
        self._total_s = 0.0

    def begin(self) -> None:
        with self._lock:
            self._since = self.clock()

    def end(self) -> None:
        with self._lock:
            if self._since is None:
                return
            now = self.clock()
            self._spans.append((self._since, now))
            self._total_s += now - self._since
            self._since = None
            while self._spans and self._spans[0][1] < now - self.window_s:
                self._spans.popleft()

    def fill(self, info: WorkerInfo) -> None:
        """Put busy time, the current call's start and the duty cycle into ``info``."""
        with self._lock:
            now = self.clock()
            spans = list(self._spans) + ([(self._since, now)] if self._since is not None else [])
            info.busy_since = self._since
            info.busy_seconds = round(self._total_s + (now - self._since if self._since is not None else 0.0), 4)
        info.duty_cycle = round(duty_cycle(spans, now, max(now - self.window_s, self.born)), 4)


def duty_cycle(spans: list[tuple[float, float]], now: float, since: float) -> float:
    """The fraction of ``[since, now]`` covered by the busy ``spans`` (which do not overlap)."""
    if now <= since:
        return 0.0
    busy = sum(max(0.0, min(end, now) - max(start, since)) for start, end in spans)
    return min(busy / (now - since), 1.0)


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
        activity: Activity | None = None,
    ) -> None:
        super().__init__(name="dq-heartbeat", daemon=True)
        self.registry = registry
        self.info = info
        self.store = store
        self.in_flight = in_flight
        self.on_stall = on_stall
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.activity = activity or Activity()
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
        """Publish one consistent copy of the state: the runner flips ``state`` on its own thread,
        and the state remembered as published must be the one that was sent (reading it apart
        from the copy once left a worker shown ``busy`` until its next beat)."""
        self.activity.fill(self.info)
        snapshot = replace(self.info)
        self.registry.publish(snapshot, ttl_s=self.ttl_s)
        self.info.heartbeat_at = snapshot.heartbeat_at
        self._published_state = snapshot.state

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
