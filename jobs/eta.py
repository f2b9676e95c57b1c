"""How long until a queued job is done: ``eta_seconds`` on a queued job's view.

From what the scheduler and the workers already keep in Redis: the job's place in its model's
pending order (``ZRANK``: the scheduler's real order — priority band, then fair share — so
the jobs counted ahead are the ones that will run first), the workers serving the model
(heartbeats: ready or busy), and the model's moving averages of a pipeline call's time and of
storing its outputs (``gen_ewma_s``, ``store_ewma_s``: updated by the FINISH script).

While a job waits, every serving worker is busy (an idle one would have picked it), each
somewhere in its current call. Workers free up in turn — the k-th of W, on average, (k + 1) /
(W + 1) of a call from now (the expected order statistics of W uniform remainders) — and then
take a call every ``per_call_s``. The calls ahead of the job are handed out in that order, so
the job's call starts when the ``calls_ahead``-th one does, ends ``per_call_s`` later, and its
outputs are stored ``storage_s`` after that. (A worker's heartbeat can say how far its call
is, but with a backlog it flips busy → ready → busy within a beat: a published "ready" or
"busy since" is stale more often than not, and the estimate was worse with it: bench/eta.py.)
A job that arrives later can still go ahead of it (a higher priority, a tenant with less
service): the estimate is for the queue as it stands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from jobs.keys import Keys
from jobs.workers import SERVING_STATES, WorkerRegistry


@dataclass(frozen=True)
class Capacity:
    """What an estimate needs about one model."""

    per_call_s: float  # moving average of a pipeline call (0: none measured yet)
    storage_s: float  # moving average of encode + upload + commit, after the call
    workers: int  # serving the model (ready or busy)


def eta_seconds(jobs_ahead: int, capacity: Capacity, batch: int = 1) -> float | None:
    """Seconds until a queued job with ``jobs_ahead`` jobs before it finishes, or None when
    nothing tells yet (no serving worker, or no call measured)."""
    g, w = capacity.per_call_s, capacity.workers
    if w <= 0 or g <= 0:
        return None
    rounds, slot = divmod(jobs_ahead // max(batch, 1), w)
    first_free = (slot + 1) / (w + 1) * g
    return round(first_free + rounds * g + g + capacity.storage_s, 3)


class CapacityCache:
    """Each model's ``Capacity``, read at most every ``ttl_s`` per process: an API answering
    thousands of submits and status reads a second must not read every worker's heartbeat for
    each (the figures move with heartbeats and finished calls, i.e. by the second anyway)."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float = 1.0) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._read: dict[str, tuple[float, Capacity]] = {}

    def get(self, model: str, now: float | None = None) -> Capacity:
        now = time.monotonic() if now is None else now
        hit = self._read.get(model)
        if hit is None or now - hit[0] > self.ttl_s:
            hit = (now, read_capacity(self.client, self.keys, model))
            self._read = {**self._read, model: hit}  # a swap: readers never see a half-written dict
        return hit[1]


def read_capacity(client: redis.Redis, keys: Keys, model: str) -> Capacity:
    gen, store = client.hmget(keys.model(model), ["gen_ewma_s", "store_ewma_s"])
    serving = sum(1 for w in WorkerRegistry(client, keys).live() if w.model == model and w.state in SERVING_STATES)
    return Capacity(float(gen) if gen else 0.0, float(store) if store else 0.0, serving)
