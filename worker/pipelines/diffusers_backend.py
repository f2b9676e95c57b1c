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
from worker.pipelines.base import GenerationRequest, StepCallback, image_seeds, steps_done

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
        torch = self._torch
        generators = [torch.Generator("cpu").manual_seed(s) for s in image_seeds(request.seed, request.num_images)]
        self.schedulers.use(request.scheduler)
        with torch.inference_mode():
            result = self.pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                width=request.width,
                height=request.height,
                num_images_per_prompt=request.num_images,
                generator=generators,
                output_type="pil",
                callback_on_step_end=step_callback(request, on_step),
            )
        images: list[Image.Image] = result.images
        return images

    def close(self) -> None:
        self.pipe = None
