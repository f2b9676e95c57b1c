"""The fleet's Prometheus metrics, computed from Redis at scrape time.

Nothing here keeps state in the process: ``read_fleet`` reads what the scripts and the
workers' heartbeats keep in Redis (queue, oldest waiting job, workers, ``jobs/stats.py``
counters and histograms) in one pipeline, and ``fleet_families`` turns that plain snapshot into
metric families. Any API process answers for every worker, host and deliverer, so one scrape
(``GET /metrics``, ``api/metrics.py``) shows the whole fleet; there is nothing to aggregate
across gunicorn workers. Labels are bounded: model, worker state, outcome, error type, worker
name (one per NeuronCore pair of the fleet) — never a job id or a prompt.

``backlog per ready worker`` is the scaling signal (SageMaker's ApproximateBacklogSizePerInstance):
queued jobs ÷ workers serving the model (ready or busy), with at least one in the divisor so
that a backlog with no worker reads as that backlog (scale from zero: docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.connections import as_text
from jobs.keys import Keys
from jobs.stats import JOB_PHASES, WEBHOOK_LATENCY, Histogram, Stats, parse_stats
from jobs.workers import SERVING_STATES, WORKER_STATES, WorkerInfo, WorkerRegistry

Clock = Callable[[], float]


@dataclass(frozen=True)
class ModelSnapshot:
    name: str
    queue_depth: int = 0
    oldest_queued_at: float | None = None  # Unix seconds (None: nothing waits)
    generation_ewma_s: float = 0.0
    paused: bool = False
    stats: Stats = field(default_factory=lambda: parse_stats({}, tuple(JOB_PHASES)))


@dataclass(frozen=True)
class FleetSnapshot:
    """Everything one scrape shows, read at ``now``."""

    now: float
    models: list[ModelSnapshot]
    workers: list[WorkerInfo]
    webhooks: Stats = field(default_factory=lambda: parse_stats({}, (WEBHOOK_LATENCY,)))
    webhook_backlog: int = 0  # jobs with webhook messages waiting to be sent


def read_fleet(client: redis.Redis, keys: Keys, models: Iterable[str], now: float) -> FleetSnapshot:
    """One pipelined read of every model's queue and stats, the live workers and the webhook stats."""
    names = sorted(set(models))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zcard(keys.pending(name))
        pipe.zrange(keys.waiting(name), 0, 0, withscores=True)
        pipe.hmget(keys.model(name), "gen_ewma_s", "paused")
        pipe.hgetall(keys.stats(name))
    pipe.hgetall(keys.webhook_stats())
    pipe.zcard(keys.webhook_due())
    replies = pipe.execute()
    snapshots = []
    for i, name in enumerate(names):
        depth, oldest, (ewma, paused), stats = replies[4 * i : 4 * i + 4]
        snapshots.append(
            ModelSnapshot(
                name,
                int(depth),
                float(oldest[0][1]) if oldest else None,
                float(ewma or 0.0),
                paused == b"1" or paused == "1",
                parse_stats(_text(stats), tuple(JOB_PHASES)),
            )
        )
    webhooks = parse_stats(_text(replies[-2]), (WEBHOOK_LATENCY,))
    workers = WorkerRegistry(client, keys).live()
    return FleetSnapshot(now, snapshots, workers, webhooks, int(replies[-1]))


def _text(raw: dict[bytes | str, bytes | str]) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in raw.items()}


def backlog_per_ready_worker(queue_depth: int, serving: int) -> float:
    """Queued jobs per worker serving the model; with none, the backlog itself (scale from zero)."""
    return queue_depth / max(serving, 1)


def model_duty_cycle(workers: list[WorkerInfo]) -> float:
    """The mean over the model's serving workers of the fraction of the last minute each spent
    generating (0 with no worker)."""
    serving = [w for w in workers if w.state in SERVING_STATES]
    return sum(w.duty_cycle for w in serving) / len(serving) if serving else 0.0


def scaling_figures(snapshot: FleetSnapshot) -> dict[str, dict[str, float]]:
    """Per model, the figures to scale on (``dq metrics``)."""
    figures = {}
    for model in snapshot.models:
        serving = sum(1 for w in snapshot.workers if w.model == model.name and w.state in SERVING_STATES)
        age = snapshot.now - model.oldest_queued_at if model.oldest_queued_at is not None else 0.0
        figures[model.name] = {
            "queue_depth": model.queue_depth,
            "ready_workers": serving,
            "backlog_per_ready_worker": backlog_per_ready_worker(model.queue_depth, serving),
            "oldest_queued_age_seconds": round(max(age, 0.0), 3),
        }
    return figures


def fleet_families(snapshot: FleetSnapshot) -> Iterator[Metric]:
    """The metric families of one scrape (plain data in, metric families out)."""
    yield from _queue_families(snapshot)
    yield from _job_families(snapshot)
    yield from _worker_families(snapshot.workers)
    yield from _webhook_families(snapshot)


def _queue_families(snapshot: FleetSnapshot) -> Iterator[Metric]:
    depth = GaugeMetricFamily("dq_queue_depth", "Jobs waiting to be picked", labels=["model"])
    oldest = GaugeMetricFamily(
        "dq_queue_oldest_age_seconds", "Age of the oldest job waiting to be picked (0: none)", labels=["model"]
    )
    workers = GaugeMetricFamily("dq_workers", "Live worker processes by state", labels=["model", "state"])
    backlog = GaugeMetricFamily(
        "dq_backlog_per_ready_worker",
        "Queued jobs per worker serving the model (ready or busy); the backlog itself with none (scale on this)",
        labels=["model"],
    )
    duty = GaugeMetricFamily(
        "dq_duty_cycle", "Mean fraction of the last minute the model's workers spent generating", labels=["model"]
    )
    ewma = GaugeMetricFamily(
        "dq_generation_ewma_seconds", "Moving average of a pipeline call's time (ETAs use it)", labels=["model"]
    )
    paused = GaugeMetricFamily("dq_model_paused", "1 when the model is paused", labels=["model"])
    by_model: dict[str, list[WorkerInfo]] = {}
    for worker in snapshot.workers:
        by_model.setdefault(worker.model, []).append(worker)
    for model in snapshot.models:
        mine = by_model.get(model.name, [])
        depth.add_metric([model.name], model.queue_depth)
        age = snapshot.now - model.oldest_queued_at if model.oldest_queued_at is not None else 0.0
        oldest.add_metric([model.name], max(age, 0.0))
        for state in WORKER_STATES:
            workers.add_metric([model.name, state], sum(1 for w in mine if w.state == state))
        serving = sum(1 for w in mine if w.state in SERVING_STATES)
        backlog.add_metric([model.name], backlog_per_ready_worker(model.queue_depth, serving))
        duty.add_metric([model.name], model_duty_cycle(mine))
        ewma.add_metric([model.name], model.generation_ewma_s)
        paused.add_metric([model.name], 1.0 if model.paused else 0.0)
    yield from (depth, oldest, workers, backlog, duty, ewma, paused)


def _job_families(snapshot: FleetSnapshot) -> Iterator[Metric]:
    outcomes = CounterMetricFamily(
        "dq_jobs_finished", "Jobs that reached a final state", labels=["model", "outcome", "error_type"]
    )
    phases = {
        name: HistogramMetricFamily(f"dq_job_{name}_seconds", f"Job phase: {doc}", labels=["model"])
        for name, doc in JOB_PHASES.items()
    }
    for model in snapshot.models:
        for name, value in sorted(model.stats.counters.items()):
            outcome, _, error_type = name.partition(":")
            outcomes.add_metric([model.name, outcome, error_type], value)
        for name, family in phases.items():
            _add_histogram(family, [model.name], model.stats.histograms[name])
    yield outcomes
    yield from phases.values()


def _worker_families(workers: list[WorkerInfo]) -> Iterator[Metric]:
    labels = ["worker", "model"]
    jobs = CounterMetricFamily("dq_worker_jobs", "Jobs generated by this worker process", labels=labels)
    busy = CounterMetricFamily(
        "dq_worker_generation_seconds", "Time this worker process spent generating", labels=labels
    )
    last = GaugeMetricFamily("dq_worker_last_generation_seconds", "Its last pipeline call's time", labels=labels)
    duty = GaugeMetricFamily("dq_worker_duty_cycle", "Fraction of the last minute spent generating", labels=labels)
    restarts = CounterMetricFamily("dq_worker_restarts", "Times its launcher restarted this slot", labels=labels)
    for w in sorted(workers, key=lambda w: w.name):
        jobs.add_metric([w.name, w.model], w.jobs_done)
        busy.add_metric([w.name, w.model], w.busy_seconds)
        last.add_metric([w.name, w.model], w.last_pipeline_seconds or 0.0)
        duty.add_metric([w.name, w.model], w.duty_cycle)
        restarts.add_metric([w.name, w.model], w.restarts)
    yield from (jobs, busy, last, duty, restarts)


def _webhook_families(snapshot: FleetSnapshot) -> Iterator[Metric]:
    attempts = CounterMetricFamily("dq_webhook_attempts", "Webhook delivery attempts by outcome", labels=["outcome"])
    for outcome, value in sorted(snapshot.webhooks.counters.items()):
        attempts.add_metric([outcome], value)
    latency = HistogramMetricFamily(
        "dq_webhook_delivery_seconds", "From a job event to its webhook's delivery (2xx), retries included"
    )
    _add_histogram(latency, [], snapshot.webhooks.histograms[WEBHOOK_LATENCY])
    backlog = GaugeMetricFamily("dq_webhook_backlog_jobs", "Jobs with webhook messages waiting to be sent")
    backlog.add_metric([], snapshot.webhook_backlog)
    yield from (attempts, latency, backlog)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    buckets = [("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in histogram.buckets]
    family.add_metric(labels, buckets, histogram.sum_s)


class FleetCollector(Collector):
    """A prometheus-client collector that reads the fleet from Redis at each scrape."""

    def __init__(self, client: redis.Redis, keys: Keys, models: Callable[[], Iterable[str]], clock: Clock) -> None:
        self.client = client
        self.keys = keys
        self.models = models
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from fleet_families(read_fleet(self.client, self.keys, self.models(), self.clock()))
