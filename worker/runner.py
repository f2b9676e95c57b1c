"""Runs jobs: pick → start → generate → (off the accelerator's path) encode, upload, commit.

A token from the model's Celery queue starts ``Runner.drain``: it asks the scheduler for the
next job (``JobStore.pick`` — or several compatible ones for a static batch), starts it,
generates, and asks again, until nothing is pending or the worker is shutting down; there is
no broker round trip between two jobs. The pipeline runs on the calling thread (the Celery
solo pool's main thread: one persistent thread for torch). Encoding, the S3 upload and the
final state write happen on the Finisher thread, so the accelerator starts the next job
while the last one is stored.

A batch: each job keeps its own seed, outputs, progress, lease, webhooks and cancel. A
member canceled (or timed out, or lost) during the call leaves the batch at once — it ends
canceled (or failed) at that step — and its images are discarded; the call goes on for the
others, and stops when none is left.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from jobs.models import output_extension
from jobs.storage import S3Storage, output_key
from jobs.store import JobStore, ProgressAnswer
from jobs.submit import batch_class
from jobs.workers import WorkerInfo
from worker.encode import encode_image
from worker.liveness import Activity, InFlight
from worker.pipelines.base import Backend, BatchBackend, GenerationRequest, image_seeds

log = logging.getLogger("dq.worker")


class NothingLeft(Exception):
    """Raised from the step callback when every job of the call left it (canceled, timed out,
    lost): stops before the VAE decode."""


@dataclass
class Generated:
    """What generation hands to the finisher: plain data."""

    job_id: str
    model: str
    attempt: int
    input: dict[str, Any]
    images: list[Image.Image]
    generation_seconds: float


STALL_FACTOR = 10  # a step may take this many times the slowest gap seen in the warm-up


@dataclass
class RunnerConfig:
    worker_name: str
    lease_s: float = 30.0
    max_attempts: int = 3
    progress_interval_s: float = 0.25  # write progress (renews the lease) at most this often
    stall_s: float = 0.0  # no step for this long = stalled; 0: derived from the warm-up
    stall_floor_s: float = 30.0  # the derived limit is never below this
    warm_gap_s: float = 0.0  # the longest gap between signs of life in the warm-up
    warm_pixels: int = 1  # width × height × images of the warm-up call
    batch_max: int = 1  # jobs per pipeline call: the model's static batch (1: no batching)
    batch_wait_s: float = 0.05  # how long a partial batch waits for compatible jobs
    pick_timeout_s: float = 30.0
    idle_s: float = 0.0  # out of jobs: wait this long for the next token before returning

    def stall_after_s(self, job_input: dict[str, Any]) -> float:
        """How long this job's generation may go without a step before it counts as stalled:
        ``DQ_STALL_S`` when set, else the warm-up's slowest gap × 10, scaled by the job's
        pixels against the warm-up's, never under ``DQ_STALL_FLOOR_S``."""
        if self.stall_s > 0:
            return self.stall_s
        pixels = int(job_input["width"]) * int(job_input["height"]) * int(job_input["num_images"])
        scale = max(pixels / max(self.warm_pixels, 1), 1.0)
        return max(self.stall_floor_s, STALL_FACTOR * self.warm_gap_s * scale)


class CancelRequests:
    """Ids of jobs whose cancel was announced (pub/sub); checked at every step, no Redis call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def add(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._ids


class Finisher:
    """Encodes, uploads and commits finished generations, in order.

    With a backlog, a generation is handed to the finisher thread so the accelerator starts
    the next job at once (duty cycle). With nothing waiting there is nothing to overlap, and
    the caller's thread finishes it itself: no thread hand-off or GIL ping-pong on the
    latency path (measured ~2-4 ms per job on the tiny model, bench/overhead.py).
    """

    def __init__(self, store: JobStore, storage: S3Storage, in_flight: InFlight, backlog: int = 2) -> None:
        self.store = store
        self.storage = storage
        self.in_flight = in_flight
        self._queue: queue.Queue[Generated | None] = queue.Queue(maxsize=backlog)
        self._busy = threading.Event()  # the thread holds an item
        self._thread = threading.Thread(target=self._loop, name="dq-finisher", daemon=True)
        self._thread.start()

    def submit(self, generated: Generated, more_waiting: bool = True) -> None:
        if not more_waiting and self._queue.empty() and not self._busy.is_set():
            self._finish_logged(generated)  # idle: finish on this thread, in order all the same
            return
        self._queue.put(generated)  # blocks when the backlog is full: back-pressure on generation

    def drain(self, timeout_s: float = 120.0) -> None:
        """Finish everything handed over, then stop the thread (warm shutdown)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._busy.set()
            try:
                self._finish_logged(item)
            finally:
                self._busy.clear()

    def _finish_logged(self, item: Generated) -> None:
        try:
            self.finish(item)
        except Exception as exc:  # never let one job's failure stop the loop
            log.exception("job %s: storing outputs failed", item.job_id)
            message = f"{type(exc).__name__}: {exc}"
            self.store.fail(item.job_id, item.model, item.attempt, "storage_error", message)
        finally:
            self.in_flight.remove(item.job_id)

    def finish(self, item: Generated) -> None:
        started = time.perf_counter()
        fmt = item.input["output_format"]
        seeds = image_seeds(int(item.input["seed"]), len(item.images))
        outputs = []
        for index, (image, seed) in enumerate(zip(item.images, seeds, strict=False)):
            body = encode_image(image, fmt)
            key = output_key(self.storage.prefix, item.model, item.job_id, index, fmt)
            stored = self.storage.put(
                key, body, fmt, {"job-id": item.job_id, "seed": str(seed), "model": item.model, "index": str(index)}
            )
            outputs.append(
                {
                    "bucket": stored.bucket,
                    "key": stored.key,
                    "content_type": stored.content_type,
                    "width": image.width,
                    "height": image.height,
                    "seed": seed,
                    "bytes": stored.bytes,
                    "sha256": stored.sha256,
                    "format": output_extension(fmt),
                }
            )
        committed = self.store.succeed(
            item.job_id,
            item.model,
            item.attempt,
            outputs,
            generation_seconds=item.generation_seconds,
            storage_seconds=time.perf_counter() - started,
        )
        if not committed:
            log.warning("job %s attempt %d: outputs not committed (no longer owned)", item.job_id, item.attempt)


@dataclass
class Member:
    """One started job in a pipeline call (a batch has several)."""

    job_id: str
    model: str
    attempt: int
    input: dict[str, Any]
    request: GenerationRequest
    deadline: float  # perf_counter time past which it fails as a timeout
    last_report: float
    left: str = ""  # why it left the call: "canceled", "timeout", "lost" ('' = still in)


class Runner:
    def __init__(
        self,
        store: JobStore,
        backend: Backend,
        finisher: Finisher,
        config: RunnerConfig,
        info: WorkerInfo,
        in_flight: InFlight,
        cancels: CancelRequests,
        on_state_change: Callable[[], None] = lambda: None,
        stopping: threading.Event | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.finisher = finisher
        self.config = config
        self.info = info
        self.in_flight = in_flight
        self.cancels = cancels
        self.on_state_change = on_state_change  # publish the worker's state now (busy / ready)
        self.stopping = stopping or threading.Event()  # set by a warm shutdown: take nothing new
        self.activity = activity or Activity()  # busy time and duty cycle, published by the heartbeat

    def drain(self, model: str) -> None:
        """Run the model's jobs, as the scheduler hands them out, until none is pending and no
        wake-up token came for ``idle_s``."""
        while not self.stopping.is_set():
            picked = self.store.pick(model, batch_max=self.config.batch_max, pick_timeout_s=self.config.pick_timeout_s)
            if not picked.ids:
                if self.config.idle_s > 0 and self.store.await_token(model, self.config.idle_s):
                    continue
                break
            members = self._start(model, picked.ids)
            if members and len(members) < self.config.batch_max:
                members += self._fill(model, members[0])
            if members:
                self.run(model, members, more_waiting=picked.pending > 0)
        if self.stopping.is_set():
            self.store.wake(model)  # a token taken while stopping goes back for another worker

    def _start(self, model: str, job_ids: list[str]) -> list[Member]:
        """queued → running for each picked job (one canceled meanwhile is skipped)."""
        members = []
        for job_id in job_ids:
            claim = self.store.start(
                job_id,
                model,
                self.config.worker_name,
                lease_s=self.config.lease_s,
                max_attempts=self.config.max_attempts,
            )
            if not claim.started or claim.input is None:
                log.info("job %s: skipped (status %s)", job_id, claim.status.value)
                continue
            self.in_flight.add(job_id, model, claim.attempt, self.config.stall_after_s(claim.input))
            started = time.perf_counter()
            deadline = started + float(claim.input.get("timeout_seconds") or float("inf"))
            request = GenerationRequest.from_input(claim.input)
            members.append(Member(job_id, model, claim.attempt, claim.input, request, deadline, started))
        return members

    def _fill(self, model: str, first: Member) -> list[Member]:
        """A partial static batch waits up to ``batch_wait_s`` for compatible jobs."""
        found: list[Member] = []
        wanted = self.config.batch_max - 1
        until = time.perf_counter() + self.config.batch_wait_s
        while len(found) < wanted and time.perf_counter() < until and not self.stopping.is_set():
            picked = self.store.pick(
                model,
                batch_max=wanted - len(found),
                batch_class=batch_class(first.input),
                pick_timeout_s=self.config.pick_timeout_s,
            )
            found += self._start(model, picked.ids)
            if not picked.ids:
                time.sleep(0.005)
        return found

    def run(self, model: str, members: list[Member], more_waiting: bool = False) -> None:
        """Generate for ``members`` in one pipeline call, then hand each job's images over."""
        self.activity.begin()
        self.info.state, self.info.current_job = "busy", ",".join(m.job_id for m in members)
        self.on_state_change()
        started = time.perf_counter()
        try:
            images = self._generate(members)
            self.info.jobs_done += sum(1 for member in members if not member.left)  # published with "ready"
        except NothingLeft:
            images = []
        except Exception as exc:
            log.exception("jobs %s: generation failed", self.info.current_job)
            for member in members:
                if not member.left:
                    self._leave(member, "failed", "generation_error", f"{type(exc).__name__}: {exc}")
            images = []
        finally:
            self.activity.end()
            self.info.state, self.info.current_job = "ready", ""
            for member in members:
                self.cancels.discard(member.job_id)
            self.on_state_change()
        seconds = time.perf_counter() - started
        self.info.last_pipeline_seconds = round(seconds, 4)
        for member, member_images in zip(members, images, strict=False):
            if member.left:
                continue
            self.in_flight.finishing(member.job_id)
            generated = Generated(member.job_id, model, member.attempt, member.input, member_images, seconds)
            self.finisher.submit(generated, more_waiting=more_waiting)

    def _generate(self, members: list[Member]) -> list[list[Image.Image]]:
        steps = members[0].request.num_inference_steps

        def on_step(step: int) -> None:
            for member in members:
                if not member.left:
                    self._step(member, step, steps)
            if all(member.left for member in members):
                raise NothingLeft()

        if len(members) == 1:
            return [self.backend.generate(members[0].request, on_step)]
        if not isinstance(self.backend, BatchBackend):
            raise TypeError(f"backend {self.backend.name!r} cannot run a batch")
        return self.backend.generate_batch([m.request for m in members], on_step)

    def _step(self, member: Member, step: int, steps: int) -> None:
        """One denoising step of one job: liveness, cancel, timeout, progress (which renews the
        lease and reads the cancel flag, the fallback when a pub/sub message was missed) at most
        every ``progress_interval_s`` — and never for the last step: the terminal write records it."""
        job_id = member.job_id
        self.in_flight.beat(job_id)
        if job_id in self.cancels:  # announced on pub/sub: stop at this step, before the VAE decode
            self._leave(member, "canceled")
            return
        now = time.perf_counter()
        if now > member.deadline:
            limit = member.input.get("timeout_seconds")
            self._leave(member, "failed", "timeout", f"ran longer than timeout_seconds={limit}")
            return
        if now - member.last_report < self.config.progress_interval_s or step >= steps:
            return
        member.last_report = now
        answer = self.store.progress(job_id, member.attempt, step, lease_s=self.config.lease_s)
        if answer is ProgressAnswer.CANCEL:
            self._leave(member, "canceled")
        elif answer is ProgressAnswer.LOST:
            log.warning("job %s attempt %d: lease lost, abandoning", job_id, member.attempt)
            self._leave(member, "lost")

    def _leave(self, member: Member, outcome: str, error_type: str = "", message: str = "") -> None:
        """The job leaves the call: record its end (unless another attempt holds it now)."""
        member.left = outcome
        if outcome == "canceled":
            self.store.cancel_running(member.job_id, member.model, member.attempt)
        elif outcome == "failed":
            self.store.fail(member.job_id, member.model, member.attempt, error_type, message)
        self.in_flight.remove(member.job_id)
