"""Any local diffusers pipeline directory (or hub id where a network exists), CPU or CUDA.

The embedded tiny model loads through exactly this path (``from_pretrained``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from worker.pipelines.base import GenerationRequest, StepCallback, image_seeds

log = logging.getLogger("dq.worker")


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

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        torch = self._torch
        generators = [torch.Generator("cpu").manual_seed(s) for s in image_seeds(request.seed, request.num_images)]

        def step_end(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step_index + 1)
            return callback_kwargs

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
                callback_on_step_end=step_end,
            )
        images: list[Image.Image] = result.images
        return images

    def close(self) -> None:
        self.pipe = None
