"""Worker heartbeats: each worker process publishes who it is and what it is doing.

A heartbeat is a hash that expires; a worker that stops publishing disappears from
``GET /v1/workers`` and from the ready/busy counts of ``GET /v1/models``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from jobs.keys import Keys

WORKER_STATES = ("loading", "ready", "busy", "stalled", "stopping")
SERVING_STATES = ("ready", "busy")  # loaded and taking jobs: what capacity and ETAs count


@dataclass
class WorkerInfo:
    name: str
    host: str
    pid: int
    model: str
    backend: str
    cores: str
    state: str
    visible_cores: str = ""  # NEURON_RT_VISIBLE_CORES / CUDA_VISIBLE_DEVICES as the process saw it
    current_job: str = ""
    last_pipeline_seconds: float | None = None
    started_at: float = 0.0
    ready_at: float | None = None  # model loaded and warmed; consuming from then on
    jobs_done: int = 0
    heartbeat_at: float = 0.0
    busy_since: float | None = None  # Unix seconds its current pipeline call began (None: idle)
    busy_seconds: float = 0.0  # time this process spent generating
    duty_cycle: float = 0.0  # fraction of the last minute (or of its life, if shorter) spent generating
    restarts: int = 0  # times the launcher restarted this slot before this process

    def public(self) -> dict[str, Any]:
        return asdict(self)


def heartbeat_ttl_s(interval_s: float) -> float:
    """How long a published state lives (and a silent worker still counts as live): a few
    missed beats under load are not a death."""
    return max(5 * interval_s, 10.0)


class WorkerRegistry:
    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys or Keys()

    def publish(self, info: WorkerInfo, ttl_s: float) -> None:
        """The worker's state, and its model's live-worker index (read by admission control)."""
        info.heartbeat_at = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.worker(info.name), json.dumps(asdict(info)), px=int(ttl_s * 1000))
        pipe.zadd(self.keys.workers(), {info.name: info.heartbeat_at})
        if info.state != "stalled":
            pipe.zadd(self.keys.model_workers(info.model), {info.name: info.heartbeat_at})
            pipe.hset(self.keys.model(info.model), "worker_seen_at", repr(info.heartbeat_at))
        else:
            pipe.zrem(self.keys.model_workers(info.model), info.name)
        pipe.zremrangebyscore(self.keys.model_workers(info.model), "-inf", info.heartbeat_at - 3600)  # long gone
        pipe.execute()

    def remove(self, name: str, model: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.worker(name))
        pipe.zrem(self.keys.workers(), name)
        pipe.zrem(self.keys.model_workers(model), name)
        pipe.execute()

    def live(self) -> list[WorkerInfo]:
        raw_names: Any = self.redis.zrange(self.keys.workers(), 0, -1)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
        if not names:
            return []
        raw = self.redis.mget([self.keys.worker(n) for n in names])
        alive: list[WorkerInfo] = []
        gone: list[str] = []
        for name, value in zip(names, raw, strict=False):
            if value is None:
                gone.append(name)
            else:
                alive.append(WorkerInfo(**json.loads(value)))
        if gone:
            self.redis.zrem(self.keys.workers(), *gone)
        return alive


def count_by_model(workers: list[WorkerInfo]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for w in workers:
        c = counts.setdefault(w.model, {"ready": 0, "busy": 0, "loading": 0})
        if w.state in c:
            c[w.state] += 1
    return counts
