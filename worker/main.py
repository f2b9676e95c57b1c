"""One worker process: load the model, warm it up, then consume its model's queue.

``create_worker`` builds every part (arq's ``create_worker``), ``Worker.run`` runs them.
Celery runs with the solo pool, so the task (and torch) runs on this process's main
thread; the model is loaded and warmed BEFORE the consumer connects, so no job is taken
by a cold worker. Three helper threads: the heartbeat (state + lease renewal), the cancel
listener (pub/sub) and a reconciler candidate; the finisher thread stores outputs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import redis
from celery import Celery, signals

from jobs.capabilities import ModelInfo, read_model
from jobs.connections import Role, create_redis
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

    def __init__(
        self,
        registry: WorkerRegistry,
        info: WorkerInfo,
        store: JobStore,
        in_flight: InFlight,
        *,
        interval_s: float,
        lease_s: float,
    ) -> None:
        super().__init__(name="dq-heartbeat", daemon=True)
        self.registry = registry
        self.info = info
        self.store = store
        self.in_flight = in_flight
        self.interval_s = interval_s
        self.lease_s = lease_s
        self._stop_event = threading.Event()

    def beat(self) -> None:
        try:
            self.registry.publish(self.info, ttl_s=max(3 * self.interval_s, 5.0))
            for job_id, attempt in self.in_flight.snapshot().items():
                self.store.renew(job_id, attempt, lease_s=self.lease_s)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def run(self) -> None:
        self.beat()
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


@dataclass
class Worker:
    """One worker process: everything it needs, built by ``create_worker``; ``run`` runs it."""

    settings: Settings
    model: ModelInfo
    info: WorkerInfo
    registry: WorkerRegistry
    store: JobStore
    in_flight: InFlight
    cancels: CancelRequests
    finisher: Finisher
    heartbeat: Heartbeat
    listener: CancelListener
    reconciler: ReconcilerThread

    def run(self) -> None:
        """Blocks until the worker is shut down (SIGTERM / SIGINT: warm shutdown)."""
        self.heartbeat.start()  # state "loading" from now on
        try:
            backend = self.load()
            runner = Runner(
                self.store,
                backend,
                self.finisher,
                RunnerConfig(
                    worker_name=self.info.name,
                    lease_s=self.settings.lease_s,
                    max_attempts=self.settings.max_attempts,
                    progress_interval_s=self.settings.progress_interval_s,
                ),
                self.info,
                self.in_flight,
                self.cancels,
            )
            self.listener.start()
            self.reconciler.start()
            self.consume(runner)
        finally:
            self.shutdown()

    def load(self) -> Backend:
        """Load the pipeline and warm it up, before consuming anything."""
        started = time.perf_counter()
        backend = load_backend(self.settings.backend, self.model, self.settings)
        load_s = time.perf_counter() - started
        warm_s = warm_up(backend, self.model) if self.settings.warmup else 0.0
        log.info("worker %s: %s loaded in %.2fs, warmed in %.2fs", self.info.name, self.model.name, load_s, warm_s)
        return backend

    def consume(self, runner: Runner) -> None:
        """Consume only this model's queue, one message at a time, on this thread (solo pool)."""
        app = create_worker_app(self.settings, runner)
        signals.worker_ready.connect(self._ready, weak=False)
        signals.worker_shutting_down.connect(self._stopping, weak=False)
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={celery_queue(self.model.name)}",
                f"--hostname={self.info.name}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ]
        )

    def shutdown(self) -> None:
        """In this order: store what was generated (warm shutdown, also when Celery leaves
        through SystemExit), stop the helper threads, then leave the registry."""
        self.finisher.drain()
        self.reconciler.stop()
        self.listener.stop()
        self.heartbeat.stop()
        try:
            self.registry.remove(self.info.name)
        except redis.RedisError:
            pass

    def _ready(self, **_: object) -> None:
        self.info.state = "ready"
        self.info.ready_at = time.time()
        self.heartbeat.beat()

    def _stopping(self, **_: object) -> None:
        self.info.state = "stopping"
        self.heartbeat.beat()


def create_worker(settings: Settings, model: str, cores: str = "") -> Worker:
    """Build a worker for ``model`` (building the embedded tiny model first if that is the one)."""
    name = settings.worker_name or default_worker_name(model, cores)
    ensure_embedded_model(settings.models_dir, model)
    model_info = read_model(settings.models_dir / model)
    client = create_redis(settings, Role.WORKER)
    keys = Keys(settings.key_prefix)
    registry = WorkerRegistry(client, keys)
    store = JobStore(
        client,
        keys,
        retention_s=settings.job_retention_s,
        progress_event_interval_s=settings.progress_event_interval_s,
    )
    info = WorkerInfo(
        name=name,
        host=socket.gethostname(),
        pid=os.getpid(),
        model=model,
        backend=settings.backend,
        cores=cores,
        state="loading",
        visible_cores=settings.neuron_rt_visible_cores or settings.cuda_visible_devices,
        started_at=time.time(),
    )
    in_flight = InFlight()
    cancels = CancelRequests()
    reconciler = Reconciler(
        store, owner=f"{name}:{os.getpid()}", interval_s=settings.reconcile_interval_s, lease_s=settings.lease_s
    )
    return Worker(
        settings=settings,
        model=model_info,
        info=info,
        registry=registry,
        store=store,
        in_flight=in_flight,
        cancels=cancels,
        finisher=Finisher(store, S3Storage(settings), in_flight),
        heartbeat=Heartbeat(
            registry, info, store, in_flight, interval_s=settings.heartbeat_s, lease_s=settings.lease_s
        ),
        listener=CancelListener(create_redis(settings, Role.PUBSUB), keys.cancel_channel(), in_flight, cancels),
        reconciler=ReconcilerThread(reconciler),
    )


def run_worker(settings: Settings, model: str, cores: str = "") -> None:
    """Build and run one worker process until it is shut down."""
    create_worker(settings, model, cores).run()
