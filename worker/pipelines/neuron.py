"""Optimum Neuron pipelines from a compiled directory (AWS Inferentia2 / Trainium).

Imported lazily: only a worker whose backend is ``neuron`` imports optimum-neuron, and
only in the worker process (never in the launcher), after ``NEURON_RT_VISIBLE_CORES``
was set for it. The UNet is placed on both visible cores by the library
(``data_parallel_mode="unet"``: the CFG batch is split across the pair); shapes are those
compiled into the artifact, checked by the API before a job is queued.

Verified here only up to the import boundary; the generation call is exercised on inf2.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from PIL import Image

from jobs.capabilities import ModelInfo
from worker.pipelines.base import GenerationRequest, StepCallback, image_seeds

INSTALL_HINT = (
    "optimum-neuron is not installed. On an inf2 instance (Neuron DLAMI) run: "
    "pip install -e '.[neuron]' --extra-index-url https://pip.repos.neuron.amazonaws.com"
)

# model_index.json `_class_name` (with or without the Neuron prefix) -> optimum.neuron class
PIPELINE_CLASSES = {
    "StableDiffusionPipeline": "NeuronStableDiffusionPipeline",
    "StableDiffusionXLPipeline": "NeuronStableDiffusionXLPipeline",
    "LatentConsistencyModelPipeline": "NeuronLatentConsistencyModelPipeline",
    "PixArtAlphaPipeline": "NeuronPixArtAlphaPipeline",
    "PixArtSigmaPipeline": "NeuronPixArtSigmaPipeline",
    "FluxPipeline": "NeuronFluxPipeline",
}


def neuron_class_name(pipeline_class: str) -> str:
    base = pipeline_class.removeprefix("Neuron")
    try:
        return PIPELINE_CLASSES[base]
    except KeyError:
        raise ValueError(
            f"no Optimum Neuron pipeline for {pipeline_class!r}; known: {sorted(PIPELINE_CLASSES)}"
        ) from None


def import_optimum_neuron() -> Any:
    try:
        return importlib.import_module("optimum.neuron")
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc


class NeuronBackend:
    name = "neuron"

    def __init__(self, model_path: str | Path, info: ModelInfo) -> None:
        import torch

        cls = getattr(import_optimum_neuron(), neuron_class_name(info.pipeline_class))
        self._torch = torch
        self.info = info
        self.pipe: Any = cls.from_pretrained(str(model_path))
        self.pipe.set_progress_bar_config(disable=True)

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        torch = self._torch
        generators = [torch.Generator("cpu").manual_seed(s) for s in image_seeds(request.seed, request.num_images)]

        def step_end(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step_index + 1)
            return callback_kwargs

        result = self.pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.num_images,
            generator=generators,
            callback_on_step_end=step_end,
        )
        images: list[Image.Image] = result.images
        return images

    def close(self) -> None:
        self.pipe = None
