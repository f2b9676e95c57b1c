"""Emulated Optimum Neuron export: an SD or SDXL diffusers directory written in the layout
``optimum-cli export neuron`` produces, each component traced to TorchScript on the CPU.

Owns what a compiled artifact looks like to optimum-neuron's loader, without the Neuron SDK:

- the layout: ``model_index.json`` (the source's, plus ``_name_or_path``), ``scheduler/`` and
  ``tokenizer/`` (``tokenizer_2/`` for SDXL) copied, and for each of ``text_encoder``,
  (``text_encoder_2``), ``unet``, ``vae_encoder``, ``vae_decoder`` a ``model.neuron``
  (``torch.jit.save`` of a trace) and a ``config.json``: the component's config with the
  exporter's additions and a ``neuron`` section (static shapes, batch, compiler, auto-cast);
- the signature each module is traced under, the one optimum-neuron's wrappers call it with
  (``optimum/neuron/modeling_diffusion.py``, ``NeuronModelTextEncoder`` … ``NeuronModelVaeDecoder``
  ``.forward``) and the outputs they read (tuples from the text encoders and the UNet, dicts
  from the VAE halves);
- a static-shape guard traced into every module, so an input shape the artifact was not
  compiled for fails as a NEFF does on inf2 (a bare CPU trace would silently accept it).

Static batches as the exporter records them: the text encoders take ``batch_size`` prompts,
the UNet and the VAE ``batch_size × num_images_per_prompt`` latents (the UNet per NeuronCore:
classifier-free guidance doubles the batch and ``DataParallel`` halves it again).

Nothing is compiled: ``compiler_type`` / ``compiler_version`` say so, and an emulated
artifact is for checking the software path, never for serving. tests/test_neuron_pipeline.py
compares the output with optimum-neuron's own exporter run with ``torch.jit.trace``.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.pipelines.tiny import StaticShape

log = logging.getLogger("dq.compile")

NEURON_FILE_NAME = "model.neuron"
EMULATED_COMPILER_TYPE = "emulated"
EMULATED_COMPILER_VERSION = "none (torch.jit.trace on CPU: diffusion-queue emulated export, not compiled)"
SDXL_TIME_IDS = 6  # original size, crop top-left, target size (5 with an aesthetic score)
COPIED_DIRS = ("scheduler", "tokenizer", "tokenizer_2", "feature_extractor")


@dataclass(frozen=True)
class CompilerOptions:
    """Compiler arguments a real export records in every ``neuron`` section."""

    auto_cast: str | None = "matmul"  # None: `--auto_cast none`
    auto_cast_type: str | None = "bf16"
    instance_type: str | None = "inf2"
    optlevel: str = "2"


@dataclass
class Component:
    """One traced module: what the loader calls, with which static inputs, described how."""

    name: str
    module: torch.nn.Module
    inputs: dict[str, tuple[list[int], torch.dtype]]  # traced input name -> (static shape, dtype)
    static: dict[str, int]  # the neuron section's static_* entries, without the prefix
    model_type: str
    task: str
    config: dict[str, Any]  # the component's config.json before the `neuron` section


def check_static_shape(value: torch.Tensor, expected: list[int], name: str) -> torch.Tensor:
    """Refuse a shape the module was not compiled for (scripted, so the trace keeps the check)."""
    if value.shape != expected:
        raise RuntimeError(
            "emulated Neuron module: input "
            + name
            + " is compiled for static shape "
            + str(expected)
            + ", got "
            + str(value.shape)
        )
    return value


@contextmanager
def quiet_torchscript() -> Iterator[None]:
    """TorchScript is the Neuron artifact format (torch-neuronx traces to it, optimum-neuron
    ``torch.jit.load``s it); torch 2.13 on the CPU calls it deprecated, which is not ours to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+. is deprecated", category=DeprecationWarning)
        # Shape-dependent Python branches become constants of a trace: that is the static shape,
        # as in a compiled NEFF, and the guard refuses any other.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


@functools.cache
def scripted_shape_check() -> Any:
    with quiet_torchscript():
        return torch.jit.script(check_static_shape)


class StaticShapeGuard(torch.nn.Module):
    """Checks every input against its static shape, then calls the component's wrapper."""

    def __init__(self, inner: torch.nn.Module, inputs: dict[str, tuple[list[int], torch.dtype]]) -> None:
        super().__init__()
        self.inner = inner
        self.names = list(inputs)
        self.shapes = [shape for shape, _ in inputs.values()]
        self.check = scripted_shape_check()

    def forward(self, *inputs: torch.Tensor) -> Any:
        checked = [
            self.check(value, shape, name) for value, shape, name in zip(inputs, self.shapes, self.names, strict=True)
        ]
        return self.inner(*checked)


class TextEncoderCall(torch.nn.Module):
    """The exporter's ``ModelWrapper``: ``model(input_ids)`` with ``return_dict=False``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> Any:
        return self.model(input_ids)


class UnetCall(torch.nn.Module):
    """The exporter's ``UnetNeuronWrapper``: timestep expanded to the batch; SDXL's
    ``text_embeds`` / ``time_ids`` passed as ``added_cond_kwargs``; returns ``(noise_pred,)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, *added: Any
    ) -> Any:
        timestep = timestep.float().expand((sample.shape[0],))
        added_cond_kwargs = dict(zip(("text_embeds", "time_ids"), added, strict=True)) if added else None
        return self.model(
            sample, timestep, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, return_dict=False
        )


class VaeEncoderCall(torch.nn.Module):
    """``{"latent_parameters": vae.encode(sample).latent_dist.parameters}``, as the exporter traces it."""

    def __init__(self, vae: Any) -> None:  # diffusers AutoencoderKL
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"latent_parameters": self.vae.encode(sample).latent_dist.parameters}


class VaeDecoderCall(torch.nn.Module):
    """``{"sample": vae.decode(latent_sample).sample}``, as the exporter traces it."""

    def __init__(self, vae: Any) -> None:  # diffusers AutoencoderKL
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sample": self.vae.decode(latent_sample, return_dict=False)[0]}


def export_emulated(
    source: Path,
    out_dir: Path,
    shape: StaticShape,
    options: CompilerOptions | None = None,
    name_or_path: str | None = None,
) -> Path:
    """Write ``source`` (a local SD or SDXL diffusers directory) as an emulated Neuron artifact
    at ``out_dir``, built in a temporary directory and moved into place. ``name_or_path`` is
    recorded in ``model_index.json`` (default: ``source``), as the exporter records the model id."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    source, out_dir = Path(source), Path(out_dir)
    options = options or CompilerOptions()
    diffusers_logging.disable_progress_bar()
    pipe = DiffusionPipeline.from_pretrained(str(source), local_files_only=True)
    components = plan_components(pipe, source, shape)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        staged = Path(tmp) / "model"
        staged.mkdir()
        _copy_processors(source, staged, name_or_path or str(source))
        sdxl = "text_encoder_2" in components_by_name(components)
        inline = False
        for component in components:
            # The exporter forces weights into the NEFF for SDXL's UNet, and the flag then stays
            # set for every component exported after it (optimum exporters/neuron/convert.py).
            inline = inline or (sdxl and component.name == "unet")
            _trace_and_save(component, staged / component.name)
            _write_config(component, staged / component.name, options, inline)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
    log.info("emulated Neuron export of %s written to %s", name_or_path or source, out_dir)
    return out_dir


def components_by_name(components: list[Component]) -> dict[str, Component]:
    return {c.name: c for c in components}


def plan_components(pipe: Any, source: Path, shape: StaticShape) -> list[Component]:
    """The modules to trace, in the exporter's order, with their static inputs."""
    class_name = type(pipe).__name__
    if class_name not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ValueError(f"emulated export supports StableDiffusion(XL)Pipeline, not {class_name}")
    batch = shape.batch_size
    images = batch * shape.num_images_per_prompt  # what the UNet and the VAE see per call
    sequence = int(pipe.tokenizer.model_max_length)
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    sdxl = text_encoder_2 is not None
    components = [_text_encoder("text_encoder", pipe.text_encoder, batch, sequence, "clip-text-model", sdxl)]
    if text_encoder_2 is not None:
        components.append(
            _text_encoder("text_encoder_2", text_encoder_2, batch, sequence, "clip-text-with-projection", sdxl)
        )
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latent = (shape.height // scale, shape.width // scale)
    projection = getattr(text_encoder_2.config, "projection_dim", None) if text_encoder_2 is not None else None
    components.append(_unet(pipe.unet, source, images, sequence, latent, scale, projection))
    components.extend(_vae_halves(pipe.vae, source, images, shape, latent))
    return components


def _text_encoder(name: str, model: Any, batch: int, sequence: int, model_type: str, sdxl: bool) -> Component:
    # The exporter's config changes (exporters/neuron/utils.py get_submodels_for_export_diffusion,
    # convert.py export): SDXL keeps every hidden state; traced with tuples, not dicts.
    if sdxl:
        model.config.output_hidden_states = True
    model.config.export_model_type = model_type
    model.config.return_dict = False
    model.config.torchscript = True
    config = json.loads(model.config.to_json_string(use_diff=True))
    return Component(
        name=name,
        module=TextEncoderCall(model),
        inputs={"input_ids": ([batch, sequence], torch.int64)},
        static={"batch_size": batch, "sequence_length": sequence},
        model_type=model_type,
        task="feature-extraction",
        config=config,
    )


def _unet(
    unet: Any, source: Path, images: int, sequence: int, latent: tuple[int, int], scale: int, projection: int | None
) -> Component:
    channels = int(unet.config.in_channels)
    inputs: dict[str, tuple[list[int], torch.dtype]] = {
        "sample": ([images, channels, *latent], torch.float32),
        "timestep": ([images], torch.float32),
        "encoder_hidden_states": ([images, sequence, int(unet.config.cross_attention_dim)], torch.float32),
    }
    if projection is not None:
        inputs["text_embeds"] = ([images, int(projection)], torch.float32)
        inputs["time_ids"] = ([images, SDXL_TIME_IDS], torch.float32)
    static = {
        "batch_size": images,
        "sequence_length": sequence,
        "num_channels": channels,
        "height": latent[0],
        "width": latent[1],
        "vae_scale_factor": scale,
    }
    return Component(
        "unet", UnetCall(unet), inputs, static, "unet", "semantic-segmentation", _diffusers_config(source, "unet")
    )


def _vae_halves(vae: Any, source: Path, images: int, shape: StaticShape, latent: tuple[int, int]) -> list[Component]:
    pixels = int(vae.config.in_channels)
    latents = int(vae.config.latent_channels)
    config = _diffusers_config(source, "vae")
    encoder = Component(
        name="vae_encoder",
        module=VaeEncoderCall(vae),
        inputs={"sample": ([images, pixels, shape.height, shape.width], torch.float32)},
        static={"batch_size": images, "num_channels": pixels, "height": shape.height, "width": shape.width},
        model_type="vae-encoder",
        task="semantic-segmentation",
        config=config,
    )
    decoder = Component(
        name="vae_decoder",
        module=VaeDecoderCall(vae),
        inputs={"latent_sample": ([images, latents, *latent], torch.float32)},
        static={"batch_size": images, "num_channels": latents, "height": latent[0], "width": latent[1]},
        model_type="vae-decoder",
        task="semantic-segmentation",
        config=dict(config),
    )
    return [encoder, decoder]


def _diffusers_config(source: Path, name: str) -> dict[str, Any]:
    """A diffusers component's config.json as optimum's ``DiffusersPretrainedConfig`` re-saves it."""
    config: dict[str, Any] = json.loads((source / name / "config.json").read_text())
    config.update({"output_attentions": False, "transformers_version": None})
    return config


def _trace_and_save(component: Component, directory: Path) -> None:
    generator = torch.Generator("cpu").manual_seed(0)
    example = tuple(
        torch.zeros(shape, dtype=dtype) if dtype == torch.int64 else torch.randn(shape, generator=generator)
        for shape, dtype in component.inputs.values()
    )
    guarded = StaticShapeGuard(component.module.eval(), component.inputs)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), quiet_torchscript():
        traced = torch.jit.trace(guarded, example, strict=False, check_trace=False)
        torch.jit.save(traced, str(directory / NEURON_FILE_NAME))


def neuron_section(component: Component, options: CompilerOptions, inline_weights: bool) -> dict[str, Any]:
    """The ``neuron`` entries optimum's ``store_compilation_config`` writes for this component."""
    return {
        "compiler_type": EMULATED_COMPILER_TYPE,
        "compiler_version": EMULATED_COMPILER_VERSION,
        "inline_weights_to_neff": inline_weights,
        **{f"static_{axis}": value for axis, value in component.static.items()},
        "dynamic_batch_size": False,
        "tensor_parallel_size": 1,
        "optlevel": options.optlevel,
        "auto_cast": options.auto_cast,
        "auto_cast_type": options.auto_cast_type if options.auto_cast is not None else None,
        "instance_type": options.instance_type,
        "int_dtype": "int64",
        "float_dtype": "fp32",
        "model_type": component.model_type,
        "output_attentions": False,
        "output_hidden_states": False,
        "task": component.task,
    }


def _write_config(component: Component, directory: Path, options: CompilerOptions, inline_weights: bool) -> None:
    config = {**component.config, "neuron": neuron_section(component, options, inline_weights)}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _copy_processors(source: Path, staged: Path, name_or_path: str) -> None:
    for name in COPIED_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, staged / name)
    index = json.loads((source / "model_index.json").read_text())
    index["_name_or_path"] = name_or_path
    (staged / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_emulated_tiny(
    out_dir: Path, shape: StaticShape, options: CompilerOptions | None = None, sdxl: bool = False
) -> Path:
    """The tiny SD (or SDXL) pipeline, built and exported as an emulated Neuron artifact."""
    from worker.pipelines.tiny import build_tiny_model, build_tiny_sdxl_model

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-src-") as tmp:
        name = "tiny-sdxl" if sdxl else "tiny-sd"
        source = Path(tmp) / name
        (build_tiny_sdxl_model if sdxl else build_tiny_model)(source)
        return export_emulated(source, out_dir, shape, options, name_or_path=f"diffusion-queue {name}")
