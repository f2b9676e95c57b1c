"""The one small interface every pipeline backend implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

# Called after each denoising step with the number of steps done; raises to stop the run.
StepCallback = Callable[[int], None]


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str | None
    num_inference_steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    num_images: int

    @classmethod
    def from_input(cls, job_input: dict[str, Any]) -> GenerationRequest:
        return cls(
            prompt=job_input["prompt"],
            negative_prompt=job_input.get("negative_prompt"),
            num_inference_steps=int(job_input["num_inference_steps"]),
            guidance_scale=float(job_input["guidance_scale"]),
            seed=int(job_input["seed"]),
            width=int(job_input["width"]),
            height=int(job_input["height"]),
            num_images=int(job_input["num_images"]),
        )


def image_seeds(seed: int, count: int) -> list[int]:
    """Image i of a job is generated from its own seed, so each output is reproducible alone."""
    return [(seed + i) % 4_294_967_296 for i in range(count)]


class Backend(Protocol):
    name: str

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        """Run the pipeline once; never called concurrently within a process."""
        ...

    def close(self) -> None: ...
