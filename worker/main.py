"""One worker process: load the model, warm it up, then consume its model's queue.

Celery runs with the solo pool, so the task (and torch) runs on this process's main
thread; the model is loaded and warmed BEFORE the consumer connects, so no job is taken
by a cold worker. A heartbeat thread publishes the worker's state and renews leases.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis
from celery import Celery, signals
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.capabilities import ModelInfo, read_model
from jobs.keys import Keys, celery_queue
from jobs.reconciler import Reconciler, ReconcilerThread
from jobs.settings import Settings
from jobs.storage import S3Storage
from jobs.store import JobStore
from jobs.transport import GENERATE_TASK, make_celery
from jobs.workers import WorkerInfo, WorkerRegistry
from worker.pipelines import load_backend
from worker.pipelines.base import Backend, GenerationRequest
from worker.pipelines.tiny import ensure_embedded_model
from worker.runner import CancelRequests, Finisher, InFlight, Runner, RunnerConfig

log = logging.getLogger("dq.worker")


class Heartbeat(threading.Thread):
    """Publishes this worker's state and renews the leases of its jobs every ``interval_s``
    (generation renews at every step too; this covers the VAE decode and the upload)."""

    def __init__(self, registry: WorkerRegistry, info: WorkerInfo, interval_s: float) -> None:
        super().__init__(name="dq-heartbeat", daemon=True)
        self.registry = registry
        self.info = info
        self.interval_s = interval_s
        self.store: JobStore | None = None
        self.in_flight: InFlight | None = None
        self.lease_s = 30.0
        self._stop_event = threading.Event()

    def beat(self) -> None:
        try:
            self.registry.publish(self.info, ttl_s=max(3 * self.interval_s, 5.0))
            if self.store is not None and self.in_flight is not None:
                for job_id, attempt in self.in_flight.snapshot().items():
                    self.store.renew(job_id, attempt, lease_s=self.lease_s)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self._stop_event.set()


class CancelListener(threading.Thread):
    """Subscribes to the cancel channel and records announcements for jobs this process runs.
    Reconnects by itself; anything missed meanwhile is caught by the next progress write."""

    def __init__(self, client: redis.Redis, channel: str, in_flight: InFlight, cancels: CancelRequests) -> None:
        super().__init__(name="dq-cancels", daemon=True)
        self.client = client
        self.channel = channel
        self.in_flight = in_flight
        self.cancels = cancels
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                while not self._stop_event.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    job_id = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
                    if job_id in self.in_flight.snapshot():
                        self.cancels.add(job_id)
            except redis.RedisError as exc:
                log.warning("cancel listener: %s; resubscribing", exc)
                self._stop_event.wait(1.0)
            finally:
                pubsub.close()

    def stop(self) -> None:
        self._stop_event.set()


def warm_up(backend: Backend, info: ModelInfo) -> float:
    """One small generation at the model's shape before taking any job."""
    request = GenerationRequest(
        prompt="warm-up",
        negative_prompt=None,
        num_inference_steps=2,
        guidance_scale=7.5,
        seed=0,
        width=info.default_width,
        height=info.default_height,
        num_images=info.num_images[0] if info.static else 1,
    )
    started = time.perf_counter()
    backend.generate(request, lambda step: None)
    return time.perf_counter() - started


def default_worker_name(model: str, cores: str) -> str:
    label = f"nc{cores}" if cores else f"cpu{os.getpid()}"
    return f"{label}@{socket.gethostname()}"


def create_worker_app(settings: Settings, runner: Runner) -> Celery:
    app = make_celery(settings)

    @app.task(name=GENERATE_TASK, ignore_result=True)
    def generate(job_id: str, model: str) -> None:
        runner.run(job_id, model)

    return app


def resilient_redis(url: str) -> redis.Redis:
    """A worker's Redis client rides out a Redis restart (~30 s of retries with backoff)
    instead of failing the job it is running."""
    return redis.Redis.from_url(
        url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def run_worker(settings: Settings, model: str, cores: str = "") -> None:
    """Blocks until the worker is shut down (SIGTERM / SIGINT: warm shutdown)."""
    name = settings.worker_name or default_worker_name(model, cores)
    ensure_embedded_model(settings.models_dir, model)
    model_info = read_model(settings.models_dir / model)
    client = resilient_redis(settings.redis_url)
    keys = Keys(settings.key_prefix)
    registry = WorkerRegistry(client, keys)
    worker_info = WorkerInfo(
        name=name,
        host=socket.gethostname(),
        pid=os.getpid(),
        model=model,
        backend=settings.backend,
        cores=cores,
        state="loading",
        visible_cores=os.environ.get("NEURON_RT_VISIBLE_CORES") or os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        started_at=time.time(),
    )
    heartbeat = Heartbeat(registry, worker_info, settings.heartbeat_s)
    heartbeat.beat()
    heartbeat.start()
    try:
        # 1. Load and warm the pipeline before consuming anything.
        load_started = time.perf_counter()
        backend = load_backend(settings.backend, model_info, settings)
        load_s = time.perf_counter() - load_started
        warm_s = warm_up(backend, model_info) if settings.warmup else 0.0
        log.info("worker %s: model %s loaded in %.2fs, warmed in %.2fs", name, model, load_s, warm_s)
        # 2. Wire the runner: generation on this thread, storage on the finisher thread.
        store = JobStore(client, keys, retention_s=settings.job_retention_s)
        storage = S3Storage(settings)
        in_flight = InFlight()
        heartbeat.store, heartbeat.in_flight, heartbeat.lease_s = store, in_flight, settings.lease_s
        finisher = Finisher(store, storage, in_flight)
        config = RunnerConfig(
            worker_name=name,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            progress_interval_s=settings.progress_interval_s,
        )
        cancels = CancelRequests()
        listener = CancelListener(
            redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30),
            keys.cancel_channel(),
            in_flight,
            cancels,
        )
        listener.start()
        runner = Runner(store, backend, finisher, config, worker_info, in_flight, cancels)
        app = create_worker_app(settings, runner)
        reconciler = ReconcilerThread(
            Reconciler(
                store, owner=f"{name}:{os.getpid()}", interval_s=settings.reconcile_interval_s, lease_s=settings.lease_s
            )
        )
        reconciler.start()

        @signals.worker_ready.connect(weak=False)
        def _ready(**_: object) -> None:
            worker_info.state = "ready"
            worker_info.ready_at = time.time()
            heartbeat.beat()

        @signals.worker_shutting_down.connect(weak=False)
        def _stopping(**_: object) -> None:
            worker_info.state = "stopping"
            heartbeat.beat()

        # 3. Consume only this model's queue, one message at a time, on this thread.
        try:
            app.worker_main(
                [
                    "worker",
                    "--pool=solo",
                    "--concurrency=1",
                    f"--queues={celery_queue(model)}",
                    f"--hostname={name}",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel=INFO",
                ]
            )
        finally:
            # Warm shutdown (Celery may leave through SystemExit): store what was generated.
            finisher.drain()
            reconciler.stop()
            listener.stop()
    finally:
        heartbeat.stop()
        try:
            registry.remove(name)
        except redis.RedisError:
            pass
