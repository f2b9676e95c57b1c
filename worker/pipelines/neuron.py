"""Optimum Neuron pipelines from a compiled directory (AWS Inferentia2 / Trainium).

Imported lazily: only a worker whose backend is ``neuron`` imports optimum-neuron, and
only in the worker process (never in the launcher), after ``NEURON_RT_VISIBLE_CORES``
was set for it. The UNet is placed on both visible cores by the library
(``data_parallel_mode="unet"``: the CFG batch is split across the pair); shapes are those
compiled into the artifact, checked by the API before a job is queued and again here.

What runs where (docs/neuron.md): on the CPU, CI runs this class unchanged through the real
optimum-neuron pipeline classes on an emulated artifact (``worker.pipelines.neuron_export``),
with test-only stand-ins for the Neuron SDK modules; compiled NEFFs, the Neuron runtime and
two-core data parallelism run only on inf2.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from PIL import Image

from jobs.capabilities import ModelInfo
from worker.pipelines.base import GenerationRequest, StepCallback, image_seeds, split_images
from worker.pipelines.diffusers_backend import SchedulerSwitch, step_callback

log = logging.getLogger("dq.worker")

INSTALL_HINT = (
    "optimum-neuron is not installed with the Neuron SDK (torch-neuronx, neuronx-cc). On an inf2 "
    "instance (Neuron DLAMI) run: "
    "pip install -e '.[neuron]' --extra-index-url https://pip.repos.neuron.amazonaws.com"
)

# Imported by optimum-neuron's pipeline and exporter modules; from the Neuron SDK's repository only.
NEURON_SDK_MODULES = ("torch_neuronx", "neuronxcc")

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
    """optimum.neuron, once the Neuron SDK parts its pipeline classes import are there."""
    missing = [name for name in NEURON_SDK_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"{INSTALL_HINT} (missing: {', '.join(missing)})")
    try:
        return importlib.import_module("optimum.neuron")
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc


def pipeline_class(pipeline_class_name: str) -> Any:
    """The optimum.neuron class; its module imports torch_neuronx, so a missing SDK shows here."""
    name = neuron_class_name(pipeline_class_name)
    module = import_optimum_neuron()
    try:
        return getattr(module, name)
    except (ImportError, RuntimeError) as exc:  # transformers' lazy module wraps the ImportError
        raise RuntimeError(f"{INSTALL_HINT} (importing {name}: {exc})") from exc


class NeuronBackend:
    name = "neuron"

    def __init__(self, model_path: str | Path, info: ModelInfo, torch_threads: int = 0) -> None:
        import torch

        if torch_threads > 0:  # the CPU side of a Neuron pipeline (scheduler, latents, decode glue)
            torch.set_num_threads(torch_threads)
        cls = pipeline_class(info.pipeline_class)
        self._torch = torch
        self.info = info
        self.pipe: Any = cls.from_pretrained(str(model_path))
        self.pipe.set_progress_bar_config(disable=True)
        self.schedulers = SchedulerSwitch(self.pipe)

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        return self.generate_batch([request], on_step)[0]

    def generate_batch(self, requests: list[GenerationRequest], on_step: StepCallback) -> list[list[Image.Image]]:
        """Compatible jobs through the compiled pipeline in one call.

        The artifact's shapes are static: the pipeline renders its compiled width × height
        whatever it is asked, so a request for another shape is refused here rather than
        answered with an image of the wrong size. A compiled batch of B prompts takes up to B
        jobs, one prompt each with one generator per image (job j's image i from its own seed
        + i); a partial batch is padded with the first job's prompt and seeds, and the padding's
        images are discarded.
        """
        for request in requests:
            self._check_shape(request)
        first = requests[0]
        batch = max(self.info.batch_size, len(requests), 1)
        padded = [*requests, *[first] * (batch - len(requests))]
        seeds = [s for r in padded for s in image_seeds(r.seed, r.num_images)]
        generators = [self._torch.Generator("cpu").manual_seed(s) for s in seeds]
        if batch > len(requests):
            log.debug("static batch %d: %d padding prompt(s) discarded", batch, batch - len(requests))
        negatives = [r.negative_prompt for r in padded]
        self.schedulers.use(first.scheduler)
        result = self.pipe(
            prompt=[r.prompt for r in padded],
            negative_prompt=None if all(n is None for n in negatives) else [n or "" for n in negatives],
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            num_images_per_prompt=first.num_images,
            generator=generators,
            callback_on_step_end=step_callback(first, on_step),
        )
        return split_images(result.images, [r.num_images for r in requests])

    def _check_shape(self, request: GenerationRequest) -> None:
        info = self.info
        if not info.static:
            return
        if request.width not in info.widths or request.height not in info.heights:
            raise ValueError(
                f"model {info.name!r} is compiled for {info.widths[0]}x{info.heights[0]}, "
                f"not {request.width}x{request.height}"
            )
        if request.num_images not in info.num_images:
            raise ValueError(
                f"model {info.name!r} is compiled for {info.num_images[0]} image(s) per prompt, "
                f"not {request.num_images}"
            )

    def close(self) -> None:
        self.pipe = None
