"""Any local diffusers pipeline directory (or hub id where a network exists), CPU or CUDA.

The embedded tiny model loads through exactly this path (``from_pretrained``). Also owns what
every diffusers-based pipeline (this one and Optimum Neuron's) shares: the per-job scheduler
swap and the step callback that reports progress in requested steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from jobs.capabilities import SCHEDULERS
from worker.pipelines.base import GenerationRequest, StepCallback, image_seeds, split_images, steps_done

log = logging.getLogger("dq.worker")


class SchedulerSwitch:
    """A job's scheduler on a loaded pipeline, swapped in place (no reload, no recompile).

    Each named scheduler is built once, from the model's own scheduler config, and kept; a job
    that names none gets the model's own back. Schedulers hold per-run state, reset by
    ``set_timesteps`` at the start of every call, and a pipeline is never called concurrently.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.default = pipe.scheduler
        self._built: dict[str, Any] = {}

    def use(self, name: str | None) -> None:
        self.pipe.scheduler = self.default if name is None else self._get(name)

    def _get(self, name: str) -> Any:
        if name not in self._built:
            import diffusers

            try:
                class_name, options = SCHEDULERS[name]
            except KeyError:
                raise ValueError(f"unknown scheduler {name!r}; known: {sorted(SCHEDULERS)}") from None
            scheduler_class = getattr(diffusers, class_name)
            self._built[name] = scheduler_class.from_config(self.default.config, **options)
            log.info("scheduler %s: built %s from the model's config", name, class_name)
        return self._built[name]


def step_callback(request: GenerationRequest, on_step: StepCallback) -> Any:
    """``callback_on_step_end`` reporting requested steps, whatever the scheduler's call count."""
    total = request.num_inference_steps

    def step_end(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        on_step(steps_done(step_index, getattr(pipe, "num_timesteps", None), total))
        return callback_kwargs

    return step_end


class DiffusersBackend:
    name = "diffusers"

    def __init__(self, model_path: str | Path, device: str = "cpu", torch_threads: int = 0) -> None:
        import torch
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        diffusers_logging.set_verbosity_error()  # the `neuron` config section is expected
        diffusers_logging.disable_progress_bar()
        self._torch = torch
        self.device = device
        options: dict[str, Any] = {"local_files_only": Path(str(model_path)).is_dir()}
        if device.startswith("cuda"):
            options["torch_dtype"] = torch.float16
        self.pipe: Any = DiffusionPipeline.from_pretrained(str(model_path), **options)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.schedulers = SchedulerSwitch(self.pipe)

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        return self.generate_batch([request], on_step)[0]

    def generate_batch(self, requests: list[GenerationRequest], on_step: StepCallback) -> list[list[Image.Image]]:
        """One pipeline call for compatible jobs (same steps, guidance, shape, images, scheduler):
        one prompt each, one generator per image (job j's image i from its own seed + i), the
        images split back per job. No padding: a diffusers pipeline takes any batch."""
        torch = self._torch
        first = requests[0]
        generators = [
            torch.Generator("cpu").manual_seed(s) for r in requests for s in image_seeds(r.seed, r.num_images)
        ]
        negatives = [r.negative_prompt for r in requests]
        self.schedulers.use(first.scheduler)
        with torch.inference_mode():
            result = self.pipe(
                prompt=[r.prompt for r in requests] if len(requests) > 1 else first.prompt,
                negative_prompt=(
                    None if all(n is None for n in negatives) else [n or "" for n in negatives]
                )
                if len(requests) > 1
                else first.negative_prompt,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                width=first.width,
                height=first.height,
                num_images_per_prompt=first.num_images,
                generator=generators,
                output_type="pil",
                callback_on_step_end=step_callback(first, on_step),
            )
        return split_images(result.images, [r.num_images for r in requests])

    def close(self) -> None:
        self.pipe = None
