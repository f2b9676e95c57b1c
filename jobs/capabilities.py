"""What a model can run, read from its artifact (``compiled/<name>/``) and nothing else.

A compiled Optimum Neuron pipeline records its static shapes in each component's
``config.json`` under ``neuron``: ``static_batch_size``, ``static_height`` and
``static_width`` (latent units for unet / vae_decoder), ``compiler_version``,
``auto_cast``, ``auto_cast_type`` ... A plain diffusers directory has no such section and
accepts any multiple of 8 within limits. The per-job schedulers a model offers come from its
``scheduler/scheduler_config.json`` and a static table (no diffusers import here; the table is
checked against diffusers in tests/test_neuron_scheduler.py). Reading JSON only: no torch,
safe for the API.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.errors import FieldError

DENOISER_DIRS = ("unet", "transformer")
TEXT_ENCODER_DIRS = ("text_encoder", "text_encoder_2")
VAE_DIRS = ("vae_decoder", "vae")
MAX_DYNAMIC_SIDE = 2048
# CFG-split data parallelism (optimum-neuron "unet" mode) puts the conditional and the
# unconditional half of the batch on the two cores: it needs guidance_scale > 1.
CFG_SPLIT_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionImg2Img")

# Per-job schedulers: API name -> (diffusers class, options over the model's own scheduler config).
# Built in the worker with ``getattr(diffusers, cls).from_config(model_config, **options)``, so the
# model's betas, prediction type and timestep spacing carry over. Not offered: LMS (needs scipy),
# DPM++ SDE (needs torchsde), DDPM (made for ~1000 steps).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # PLMS, as SD 1.5 ships it
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "deis": ("DEISMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
# diffusers 0.35 ``KarrasDiffusionSchedulers``: each lists all the others in ``_compatibles``, so
# any of them can be built from a model whose scheduler is one of them (SD 1.x/2.x, SDXL).
KARRAS_COMPATIBLE = frozenset(
    {
        "DDIMScheduler",
        "DDPMScheduler",
        "PNDMScheduler",
        "LMSDiscreteScheduler",
        "EulerDiscreteScheduler",
        "HeunDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "DEISMultistepScheduler",
        "UniPCMultistepScheduler",
        "DPMSolverSDEScheduler",
        "EDMEulerScheduler",
    }
)
# Pipelines whose loader replaces the scheduler (LCM) offer no other.
FIXED_SCHEDULER_PIPELINES = ("LatentConsistencyModelPipeline",)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    backend: str  # "neuron" (compiled .neuron graphs) or "diffusers" (plain weights)
    pipeline_class: str
    vae_scale_factor: int
    default_width: int
    default_height: int
    static: bool  # shapes fixed by a `neuron` config section
    widths: tuple[int, ...] = ()  # static: the only allowed values
    heights: tuple[int, ...] = ()
    num_images: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    batch_size: int = 1
    max_side: int = MAX_DYNAMIC_SIDE
    compiler_version: str | None = None
    auto_cast: str | None = None
    auto_cast_type: str | None = None
    requires_guidance_above_one: bool = False
    schedulers: tuple[str, ...] = ()  # names a job may choose (`scheduler`); none chosen: the model's own
    default_scheduler: str | None = None  # the model's own, by name when it is in SCHEDULERS
    neuron: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data.pop("neuron")
        data["shapes"] = self.shapes()
        return data

    def shapes(self) -> dict[str, Any]:
        if self.static:
            return {"widths": list(self.widths), "heights": list(self.heights), "num_images": list(self.num_images)}
        return {
            "widths": {"min": 64, "max": self.max_side, "multiple_of": 8},
            "heights": {"min": 64, "max": self.max_side, "multiple_of": 8},
            "num_images": list(self.num_images),
        }


@dataclass(frozen=True)
class ResolvedShape:
    width: int
    height: int
    num_images: int


def resolve_shape(
    info: ModelInfo, width: int | None, height: int | None, num_images: int | None, guidance_scale: float
) -> tuple[ResolvedShape | None, list[FieldError]]:
    """Fill omitted values from the model and check the rest against what it can run."""
    w = info.default_width if width is None else width
    h = info.default_height if height is None else height
    n = info.num_images[0] if num_images is None and info.static else (num_images or 1)
    errors: list[FieldError] = []
    for name, value, allowed in (("width", w, info.widths), ("height", h, info.heights)):
        if info.static and value not in allowed:
            errors.append(FieldError(name, f"model {info.name!r} is compiled for {name} {_one_of(allowed)}"))
        elif not info.static and not (64 <= value <= info.max_side):
            errors.append(FieldError(name, f"model {info.name!r} supports {name} from 64 to {info.max_side}"))
    if n not in info.num_images:
        errors.append(FieldError("num_images", f"model {info.name!r} runs num_images {_one_of(info.num_images)}"))
    if info.requires_guidance_above_one and guidance_scale <= 1:
        errors.append(
            FieldError(
                "guidance_scale",
                f"model {info.name!r} splits classifier-free guidance across its NeuronCore pair: "
                "guidance_scale must be greater than 1",
            )
        )
    return (ResolvedShape(w, h, n) if not errors else None), errors


def scheduler_errors(info: ModelInfo, name: str | None) -> list[FieldError]:
    """A named scheduler must be one the model offers; ``None`` means the model's own."""
    if name is None or name in info.schedulers:
        return []
    offered = f"one of {list(info.schedulers)}" if info.schedulers else "only its own (omit the field)"
    return [FieldError("scheduler", f"model {info.name!r} runs scheduler {offered}, not {name!r}")]


def model_schedulers(path: Path, pipeline_class: str) -> dict[str, Any]:
    """``schedulers`` / ``default_scheduler`` for ModelInfo, from ``scheduler/scheduler_config.json``."""
    config = _read_json(path / "scheduler" / "scheduler_config.json") or {}
    own = str(config.get("_class_name", ""))
    fixed = pipeline_class.removeprefix("Neuron").startswith(FIXED_SCHEDULER_PIPELINES)
    names = () if fixed or own not in KARRAS_COMPATIBLE else tuple(SCHEDULERS)
    default = next((n for n, (cls, options) in SCHEDULERS.items() if cls == own and not options), None)
    return {"schedulers": names, "default_scheduler": default}


def _one_of(values: tuple[int, ...]) -> str:
    return " or ".join(str(v) for v in values) if len(values) < 4 else f"one of {list(values)}"


def read_model(path: Path) -> ModelInfo:
    """Read one model directory; raises ValueError when it is not a pipeline directory."""
    index = _read_json(path / "model_index.json")
    if index is None:
        raise ValueError(f"{path}: no model_index.json")
    pipeline_class = str(index.get("_class_name", "unknown"))
    denoiser = _first_config(path, DENOISER_DIRS) or {}
    text_encoder = _first_config(path, TEXT_ENCODER_DIRS) or {}
    vae = _first_config(path, VAE_DIRS) or {}
    blocks = vae.get("block_out_channels") or [0, 0, 0, 0]
    scale = 2 ** (len(blocks) - 1)
    is_compiled = any(
        any((path / d).glob("*.neuron")) for d in (*DENOISER_DIRS, *TEXT_ENCODER_DIRS, *VAE_DIRS) if (path / d).is_dir()
    )
    backend = "neuron" if is_compiled else "diffusers"
    neuron = denoiser.get("neuron") or {}
    name = path.name
    if neuron:
        scale = int(neuron.get("static_vae_scale_factor") or scale)
        width = int(neuron["static_width"]) * scale
        height = int(neuron["static_height"]) * scale
        unet_batch = int(neuron.get("static_batch_size", 1))
        text_batch = int((text_encoder.get("neuron") or {}).get("static_batch_size", 1)) or 1
        # optimum-neuron records no num_images_per_prompt: the UNet batch is batch × images.
        per_prompt = max(unet_batch // text_batch, 1)
        base = pipeline_class.removeprefix("Neuron")
        return ModelInfo(
            name=name,
            path=str(path),
            backend=backend,
            pipeline_class=pipeline_class,
            vae_scale_factor=scale,
            default_width=width,
            default_height=height,
            static=True,
            widths=(width,),
            heights=(height,),
            num_images=(per_prompt,),
            batch_size=text_batch,
            compiler_version=_opt_str(neuron.get("compiler_version")),
            auto_cast=_opt_str(neuron.get("auto_cast")),
            auto_cast_type=_opt_str(neuron.get("auto_cast_type")),
            requires_guidance_above_one=base.startswith(CFG_SPLIT_PIPELINES),
            neuron=neuron,
            **model_schedulers(path, pipeline_class),
        )
    sample = int(denoiser.get("sample_size") or 64)
    side = sample * scale
    return ModelInfo(
        name=name,
        path=str(path),
        backend=backend,
        pipeline_class=pipeline_class,
        vae_scale_factor=scale,
        default_width=side,
        default_height=side,
        static=False,
        max_side=min(MAX_DYNAMIC_SIDE, max(4 * side, 256)),
        **model_schedulers(path, pipeline_class),
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open() as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _first_config(root: Path, names: tuple[str, ...]) -> dict[str, Any] | None:
    for name in names:
        data = _read_json(root / name / "config.json")
        if data is not None:
            return data
    return None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


class ModelCatalog:
    """The models under one directory, rescanned at most every ``rescan_s`` on a miss."""

    def __init__(self, root: Path, rescan_s: float = 2.0) -> None:
        self.root = root
        self.rescan_s = rescan_s
        self._models: dict[str, ModelInfo] = {}
        self._scanned_at = 0.0
        self.scan()

    def scan(self) -> None:
        models: dict[str, ModelInfo] = {}
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if child.is_dir() and (child / "model_index.json").is_file():
                    try:
                        models[child.name] = read_model(child)
                    except (ValueError, KeyError, TypeError):
                        continue
        self._models = models
        self._scanned_at = time.monotonic()

    def get(self, name: str) -> ModelInfo | None:
        info = self._models.get(name)
        if info is None and time.monotonic() - self._scanned_at > self.rescan_s:
            self.scan()
            info = self._models.get(name)
        return info

    def all(self) -> list[ModelInfo]:
        if time.monotonic() - self._scanned_at > self.rescan_s:
            self.scan()
        return list(self._models.values())
