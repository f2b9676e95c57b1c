"""Test-only pipeline backends, loaded by workers through ``DQ_BACKEND=tests.support:<factory>``."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import redis
from PIL import Image

from jobs.settings import Settings
from worker.pipelines.base import GenerationRequest, StepCallback
from worker.pipelines.diffusers_backend import DiffusersBackend
from worker.pipelines.emulated import EmulatedBackend


class RaisingBackend(DiffusersBackend):
    """The real tiny pipeline, which raises inside its denoising loop for prompts with 'explode'."""

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        if "explode" not in request.prompt:
            return super().generate(request, on_step)

        def exploding_step(step: int) -> None:
            on_step(step)
            if step == 2:
                raise RuntimeError(f"the UNet exploded at step {step}")

        return super().generate(request, exploding_step)


def raising_backend(path: Path, settings: Settings) -> RaisingBackend:
    return RaisingBackend(path, device="cpu", torch_threads=settings.torch_threads)


class PoisonBackend(EmulatedBackend):
    """The emulated accelerator, which kills its own process mid-generation on 'poison' prompts."""

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        if "poison" not in request.prompt:
            return super().generate(request, on_step)

        def dying_step(step: int) -> None:
            on_step(step)
            os._exit(86)  # like a segfault or the OOM killer: no cleanup, no ack

        return super().generate(request, dying_step)


def poison_backend(path: Path, settings: Settings) -> PoisonBackend:
    return PoisonBackend(settings.emulated_seconds)


class HangingBackend(EmulatedBackend):
    """The emulated accelerator, which hangs forever at step 2 (like a wedged NeuronCore) for
    'hang' prompts while the marker file ``$DQ_TEST_HANG_MARKER`` exists; the process that hangs
    consumes the marker (so the re-run elsewhere does not hang) and writes the time it hung."""

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        marker = Path(os.environ.get("DQ_TEST_HANG_MARKER", "/nonexistent"))
        if "hang" not in request.prompt:
            return super().generate(request, on_step)

        def hanging_step(step: int) -> None:
            on_step(step)
            if step == 2:
                try:
                    marker.unlink()
                except FileNotFoundError:
                    return
                marker.with_suffix(".hung").write_text(repr(time.time()))
                threading.Event().wait()  # blocks forever, the GIL released (as a runtime call would)

        return super().generate(request, hanging_step)


def hanging_backend(path: Path, settings: Settings) -> HangingBackend:
    return HangingBackend(settings.emulated_seconds)


class StepRecordingBackend(EmulatedBackend):
    """The emulated accelerator, which RPUSHes ``<step> <time>`` to ``test:steps:<seed>`` in Redis
    after each step it finishes, so a test knows exactly which steps ran and when. With
    'slow-decode' in the prompt it also spends 1.5 s after the last step (a long VAE decode)."""

    def __init__(self, seconds_per_job: float, redis_url: str) -> None:
        super().__init__(seconds_per_job)
        self.client = redis.Redis.from_url(redis_url)

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        key = f"test:steps:{request.seed}"

        def recording_step(step: int) -> None:
            self.client.rpush(key, f"{step} {time.time()!r}")
            on_step(step)

        images = super().generate(request, recording_step)
        if "slow-decode" in request.prompt:
            time.sleep(1.5)
        return images


def step_recording_backend(path: Path, settings: Settings) -> StepRecordingBackend:
    return StepRecordingBackend(settings.emulated_seconds, settings.redis_url)


class GilHoggingBackend(EmulatedBackend):
    """The emulated accelerator, which holds the GIL at every step (one long C call that never
    lets another thread run: ``sum`` over a range of ``$DQ_TEST_GIL_HOG`` integers, ~1 s per
    10**8), as a runtime or library call that does not release it would."""

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        size = int(os.environ.get("DQ_TEST_GIL_HOG", "100000000"))

        def hogging_step(step: int) -> None:
            sum(range(size))
            on_step(step)

        return super().generate(request, hogging_step)


def gil_hogging_backend(path: Path, settings: Settings) -> GilHoggingBackend:
    return GilHoggingBackend(settings.emulated_seconds)
