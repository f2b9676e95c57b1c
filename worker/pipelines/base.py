"""The one small interface every pipeline backend implements, and the plain helpers they share
(per-image seeds, denoising progress as steps). No torch here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from PIL import Image

# Called after each denoising step with the number of steps done (1 … num_inference_steps, the
# last only once, at the end); raises to stop the run.
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
    scheduler: str | None = None  # a name from jobs.capabilities.SCHEDULERS; None: the model's own

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
            scheduler=job_input.get("scheduler"),
        )


def image_seeds(seed: int, count: int) -> list[int]:
    """Image i of a job is generated from its own seed, so each output is reproducible alone."""
    return [(seed + i) % 4_294_967_296 for i in range(count)]


def steps_done(callback_index: int, num_callbacks: int | None, num_steps: int) -> int:
    """The step count to report after diffusers' ``callback_on_step_end`` number ``callback_index``
    (0-based) of ``num_callbacks``.

    diffusers calls back once per scheduler timestep, which is not always once per requested
    step: PNDM gives steps + 1 calls, Heun and KDPM2 2 × steps - 1. Scaled to the requested
    steps (rounded down) and clamped, the count never decreases, never exceeds ``num_steps``,
    and reaches it only at the last call, so "the last step" still means "denoising is over".
    Without ``num_callbacks`` it is only clamped.
    """
    index = callback_index + 1
    if not num_callbacks or num_callbacks == num_steps:
        return min(index, num_steps)
    return min(num_steps, index * num_steps // num_callbacks)


def split_images(images: list[Image.Image], counts: list[int]) -> list[list[Image.Image]]:
    """A batched call's images, back per job (``counts[j]`` images for job j, in order)."""
    split, at = [], 0
    for count in counts:
        split.append(images[at : at + count])
        at += count
    return split


class Backend(Protocol):
    name: str

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        """Run the pipeline once; never called concurrently within a process."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BatchBackend(Backend, Protocol):
    """A backend that runs several compatible jobs in one call (a static batch)."""

    def generate_batch(self, requests: list[GenerationRequest], on_step: StepCallback) -> list[list[Image.Image]]:
        """The images of each request, in order."""
        ...
