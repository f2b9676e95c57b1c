"""An emulated accelerator: holds "the core" for a fixed time and returns plain images.

For benchmarks and tests where the model is not the point: ``DQ_BACKEND=emulated`` with
``DQ_EMULATED_SECONDS`` per job (0 = a no-op backend). It sleeps a fixed time per step
(what a NeuronCore would spend), so progress writes, cancel checks and GIL waits add to the
wall time instead of being absorbed by a deadline. For a model compiled with a static batch
B (its artifact's ``batch_size``) a call always costs a full batch — ``1 + cost × (B − 1)``
times one job, ``DQ_EMULATED_BATCH_COST`` being the marginal cost of a prompt (0.4667 gives
2.4 × one for a batch of 4) — however many jobs fill it. Imports no torch, so hundreds of
these start in seconds. Output is a deterministic function of the seed and shape.
"""

from __future__ import annotations

import time

from PIL import Image

from worker.pipelines.base import GenerationRequest, StepCallback, image_seeds


class EmulatedBackend:
    name = "emulated"

    def __init__(self, seconds_per_job: float = 0.0, batch_cost: float = 1.0, static_batch: int = 1) -> None:
        self.seconds_per_job = seconds_per_job
        self.batch_cost = batch_cost
        self.static_batch = max(static_batch, 1)

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        return self.generate_batch([request], on_step)[0]

    def generate_batch(self, requests: list[GenerationRequest], on_step: StepCallback) -> list[list[Image.Image]]:
        """One call for several compatible jobs (same steps and shape): their images, in order."""
        prompts = max(len(requests), self.static_batch)  # a static batch always runs full
        seconds = self.seconds_per_job * (1 + self.batch_cost * (prompts - 1))
        steps = requests[0].num_inference_steps
        per_step = seconds / steps
        for step in range(1, steps + 1):
            if per_step > 0:
                time.sleep(per_step)
            on_step(step)
        return [
            [_image_for(seed, r.width, r.height) for seed in image_seeds(r.seed, r.num_images)] for r in requests
        ]

    def close(self) -> None:
        pass


def _image_for(seed: int, width: int, height: int) -> Image.Image:
    colour = (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF)
    return Image.new("RGB", (width, height), colour)
