"""Runs one job: claim → generate → (off the accelerator's path) encode, upload, commit.

The pipeline runs on the calling thread (the Celery solo pool's main thread: one persistent
thread for torch). Encoding, the S3 upload and the final state write happen on the
Finisher thread, so the accelerator starts the next job while the last one is stored.
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
from jobs.store import JobStore
from jobs.workers import WorkerInfo
from worker.encode import encode_image
from worker.liveness import InFlight
from worker.pipelines.base import Backend, GenerationRequest, image_seeds

log = logging.getLogger("dq.worker")


class JobCanceled(Exception):
    """Raised from the step callback when a cancel was requested: stops before the VAE decode."""


class LeaseLost(Exception):
    """Raised from the step callback when this attempt no longer owns the job."""


class JobTimeout(Exception):
    """Raised from the step callback when the job ran past its ``timeout_seconds``."""


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
            item.job_id, item.model, item.attempt, outputs, generation_seconds=item.generation_seconds
        )
        if not committed:
            log.warning("job %s attempt %d: outputs not committed (no longer owned)", item.job_id, item.attempt)


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
    ) -> None:
        self.store = store
        self.backend = backend
        self.finisher = finisher
        self.config = config
        self.info = info
        self.in_flight = in_flight
        self.cancels = cancels
        self.on_state_change = on_state_change  # publish the worker's state now (busy / ready)

    def run(self, job_id: str, model: str) -> None:
        # 1. Claim the job: queued → running (anything else: acknowledge and skip).
        claim = self.store.start(
            job_id, model, self.config.worker_name, lease_s=self.config.lease_s, max_attempts=self.config.max_attempts
        )
        if not claim.started or claim.input is None:
            log.info("job %s: skipped (status %s)", job_id, claim.status)
            return
        attempt = claim.attempt
        self.in_flight.add(job_id, model, attempt, self.config.stall_after_s(claim.input))
        self.info.state, self.info.current_job = "busy", job_id
        self.on_state_change()
        # 2. Generate on this thread, reporting each step.
        try:
            images, seconds = self._generate(job_id, model, attempt, claim.input)
        except LeaseLost:
            log.warning("job %s attempt %d: lease lost, abandoning", job_id, attempt)
            self.in_flight.remove(job_id)
            return
        except JobCanceled:
            self.store.cancel_running(job_id, model, attempt)
            self.in_flight.remove(job_id)
            return
        except JobTimeout:
            limit = claim.input.get("timeout_seconds")
            self.store.fail(job_id, model, attempt, "timeout", f"ran longer than timeout_seconds={limit}")
            self.in_flight.remove(job_id)
            return
        except Exception as exc:
            log.exception("job %s: generation failed", job_id)
            self.store.fail(job_id, model, attempt, "generation_error", f"{type(exc).__name__}: {exc}")
            self.in_flight.remove(job_id)
            return
        finally:
            self.info.state, self.info.current_job = "ready", ""
            self.cancels.discard(job_id)
            self.on_state_change()
        self.in_flight.finishing(job_id)
        self.info.last_pipeline_seconds = round(seconds, 4)
        self.info.jobs_done += 1
        # 3. Hand over: encode, upload and commit happen off this thread.
        waiting = self.store.queued_messages(model) > 0
        self.finisher.submit(Generated(job_id, model, attempt, claim.input, images, seconds), more_waiting=waiting)

    def _generate(
        self, job_id: str, model: str, attempt: int, job_input: dict[str, Any]
    ) -> tuple[list[Image.Image], float]:
        request = GenerationRequest.from_input(job_input)
        lease_s = self.config.lease_s
        started = time.perf_counter()
        deadline = started + float(job_input.get("timeout_seconds") or float("inf"))
        interval_s = self.config.progress_interval_s
        last_report = [started]

        def on_step(step: int) -> None:
            self.in_flight.beat(job_id)
            # A cancel announced on pub/sub stops the run at this step, before the VAE decode.
            if job_id in self.cancels:
                raise JobCanceled(job_id)
            now = time.perf_counter()
            if now > deadline:
                raise JobTimeout(job_id)
            # Progress (which renews the lease and reads the cancel flag, the fallback when a
            # pub/sub message was missed) is written at most every `interval_s`, and never for the
            # last step: the terminal write records it.
            if now - last_report[0] < interval_s or step >= request.num_inference_steps:
                return
            last_report[0] = now
            answer = self.store.progress(job_id, attempt, step, lease_s=lease_s)
            if answer == "cancel":
                raise JobCanceled(job_id)
            if answer == "lost":
                raise LeaseLost(job_id)

        images = self.backend.generate(request, on_step)
        return images, time.perf_counter() - started
