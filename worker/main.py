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
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from celery import Celery, signals

from jobs.capabilities import ModelInfo, read_model
from jobs.connections import Role, create_redis
from jobs.keys import Keys, celery_queue
from jobs.reconciler import Reconciler, ReconcilerThread
from jobs.settings import Settings
from jobs.storage import S3Storage
from jobs.store import JobStore
from jobs.transport import WORK_TASK, make_celery
from jobs.workers import WorkerInfo, WorkerRegistry, heartbeat_ttl_s
from worker.liveness import Heartbeat, Holding, InFlight
from worker.pipelines import load_backend
from worker.pipelines.base import Backend, BatchBackend, GenerationRequest
from worker.pipelines.tiny import ensure_embedded_model
from worker.runner import CancelRequests, Finisher, Runner, RunnerConfig

log = logging.getLogger("dq.worker")
EXIT_STALLED = 75  # the launcher restarts a child whatever its exit code; this one says why


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
                    if job_id in self.in_flight:
                        self.cancels.add(job_id)
            except redis.RedisError as exc:
                log.warning("cancel listener: %s; resubscribing", exc)
                self._stop_event.wait(1.0)
            finally:
                pubsub.close()

    def stop(self) -> None:
        self._stop_event.set()


@dataclass(frozen=True)
class WarmUp:
    seconds: float
    longest_gap_s: float  # between signs of life: start → first step → … → last step → images
    pixels: int  # width × height × images


def warm_up(backend: Backend, info: ModelInfo) -> WarmUp:
    """One small generation at the model's shape before taking any job; its timing sets the
    stall limit (``RunnerConfig.stall_after_s``)."""
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
    marks = [time.perf_counter()]
    backend.generate(request, lambda step: marks.append(time.perf_counter()))
    marks.append(time.perf_counter())
    gap = max(b - a for a, b in zip(marks, marks[1:], strict=False))
    return WarmUp(marks[-1] - marks[0], gap, request.width * request.height * request.num_images)


class GiveBack:
    """What a worker does when a generation stalls (a wedged core never returns): show
    ``state: stalled``, store what was already generated, give the job back to the queue (its
    attempt counted), and exit — the launcher starts a fresh process, as nothing can interrupt
    the stuck call from inside."""

    def __init__(
        self,
        store: JobStore,
        registry: WorkerRegistry,
        info: WorkerInfo,
        finisher: Finisher,
        *,
        ttl_s: float,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.store = store
        self.registry = registry
        self.info = info
        self.finisher = finisher
        self.ttl_s = ttl_s
        self.exit = exit

    def __call__(self, held: Holding) -> None:
        log.error("job %s: no step for %.1f s: generation stalled; giving it back", held.job_id, held.stall_after_s)
        self.info.state, self.info.current_job = "stalled", held.job_id
        try:
            self.registry.publish(self.info, ttl_s=self.ttl_s)
            self.finisher.drain(timeout_s=10.0)
            outcome = self.store.give_back(held.job_id, held.model, held.attempt)
            log.error("job %s attempt %d: %s; exiting for a fresh process", held.job_id, held.attempt, outcome.value)
        except redis.RedisError as exc:  # the lease runs out and the reconciler re-queues it
            log.error("job %s: could not give it back (%s); exiting", held.job_id, exc)
        self.exit(EXIT_STALLED)


def batch_size(info: ModelInfo, backend: Backend) -> int:
    """Jobs per pipeline call: the artifact's static batch, when the backend can run batches."""
    if info.static and info.batch_size > 1 and isinstance(backend, BatchBackend):
        return info.batch_size
    return 1


def default_worker_name(model: str, cores: str) -> str:
    label = f"nc{cores}" if cores else f"cpu{os.getpid()}"
    return f"{label}@{socket.gethostname()}"


def create_worker_app(settings: Settings, runner: Runner) -> Celery:
    app = make_celery(settings)

    @app.task(name=WORK_TASK, ignore_result=True)
    def work(model: str) -> None:
        """A token woke this worker: run the model's pending jobs until there are none."""
        runner.drain(model)

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
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Blocks until the worker is shut down (SIGTERM / SIGINT: warm shutdown)."""
        self.heartbeat.start()  # state "loading" from now on
        try:
            backend, warm = self.load()
            runner = Runner(
                self.store,
                backend,
                self.finisher,
                RunnerConfig(
                    worker_name=self.info.name,
                    lease_s=self.settings.lease_s,
                    max_attempts=self.settings.max_attempts,
                    progress_interval_s=self.settings.progress_interval_s,
                    stall_s=self.settings.stall_s,
                    stall_floor_s=self.settings.stall_floor_s,
                    warm_gap_s=warm.longest_gap_s if warm else 0.0,
                    warm_pixels=warm.pixels if warm else 1,
                    batch_max=batch_size(self.model, backend),
                    batch_wait_s=self.settings.batch_wait_ms / 1000,
                    pick_timeout_s=self.settings.pick_timeout_s,
                    idle_s=self.settings.drain_idle_s,
                ),
                self.info,
                self.in_flight,
                self.cancels,
                on_state_change=self.heartbeat.poke,
                stopping=self.stopping,
                activity=self.heartbeat.activity,
            )
            self.listener.start()
            self.reconciler.start()
            self.consume(runner)
        finally:
            self.shutdown()

    def load(self) -> tuple[Backend, WarmUp | None]:
        """Load the pipeline and warm it up, before consuming anything."""
        started = time.perf_counter()
        backend = load_backend(self.settings.backend, self.model, self.settings)
        load_s = time.perf_counter() - started
        warm = warm_up(backend, self.model) if self.settings.warmup else None
        warm_s = warm.seconds if warm else 0.0
        log.info("worker %s: %s loaded in %.2fs, warmed in %.2fs", self.info.name, self.model.name, load_s, warm_s)
        return backend, warm

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
                *([] if self.settings.celery_events else ["--without-heartbeat"]),  # event heartbeats: Flower
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
            self.registry.remove(self.info.name, self.info.model)
        except redis.RedisError:
            pass

    def _ready(self, **_: object) -> None:
        self.info.state = "ready"
        self.info.ready_at = time.time()
        self.heartbeat.beat()

    def _stopping(self, **_: object) -> None:
        self.stopping.set()  # the drain loop takes nothing new; the running call finishes
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
        restarts=settings.worker_restarts,
    )
    in_flight = InFlight()
    cancels = CancelRequests()
    reconciler = Reconciler(
        store,
        owner=f"{name}:{os.getpid()}",
        interval_s=settings.reconcile_interval_s,
        lease_s=settings.lease_s,
        aging_s=settings.priority_aging_s,
    )
    finisher = Finisher(store, S3Storage(settings), in_flight)
    give_back = GiveBack(store, registry, info, finisher, ttl_s=heartbeat_ttl_s(settings.heartbeat_s))
    return Worker(
        settings=settings,
        model=model_info,
        info=info,
        registry=registry,
        store=store,
        in_flight=in_flight,
        cancels=cancels,
        finisher=finisher,
        heartbeat=Heartbeat(
            registry,
            info,
            store,
            in_flight,
            give_back,
            interval_s=settings.heartbeat_s,
            lease_s=settings.lease_s,
        ),
        listener=CancelListener(create_redis(settings, Role.PUBSUB), keys.cancel_channel(), in_flight, cancels),
        reconciler=ReconcilerThread(reconciler),
    )


def run_worker(settings: Settings, model: str, cores: str = "") -> None:
    """Build and run one worker process until it is shut down."""
    create_worker(settings, model, cores).run()
