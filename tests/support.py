"""Test-only pipeline backends, loaded by workers through ``DQ_BACKEND=tests.support:<factory>``."""

from __future__ import annotations

import os
from pathlib import Path

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
