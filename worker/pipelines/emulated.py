"""An emulated accelerator: holds "the core" for a fixed time and returns plain images.

For benchmarks and launcher tests where the model is not the point: ``DQ_BACKEND=emulated``
with ``DQ_EMULATED_SECONDS`` per job (0 = a no-op backend). Imports no torch, so hundreds of
these start in seconds. Output is a deterministic function of the seed and shape.
"""

from __future__ import annotations

import time

from PIL import Image

from worker.pipelines.base import GenerationRequest, StepCallback, image_seeds


class EmulatedBackend:
    name = "emulated"

    def __init__(self, seconds_per_job: float = 0.0) -> None:
        self.seconds_per_job = seconds_per_job

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        per_step = self.seconds_per_job / request.num_inference_steps
        deadline = time.perf_counter()
        for step in range(1, request.num_inference_steps + 1):
            deadline += per_step
            pause = deadline - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            on_step(step)
        return [
            _image_for(seed, request.width, request.height) for seed in image_seeds(request.seed, request.num_images)
        ]

    def close(self) -> None:
        pass


def _image_for(seed: int, width: int, height: int) -> Image.Image:
    colour = (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF)
    return Image.new("RGB", (width, height), colour)
