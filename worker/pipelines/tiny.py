"""The embedded default model: a tiny random-weight Stable Diffusion pipeline (and an SDXL twin).

Built deterministically (fixed seeds, generated tokenizer vocabulary) with
``save_pretrained`` into ``compiled/tiny-sd/`` and loaded back with ``from_pretrained``,
offline, exactly like a real model. ``static`` writes an Optimum-Neuron-style ``neuron``
section into the component configs, so static-shape handling is exercised without inf2.
The SDXL twin (two text encoders, text-time conditioning) is the source of the emulated
SDXL Neuron export (``worker.pipelines.neuron_export``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_SIDE = 64  # pixels; latent 32 with the 2-block VAE (scale factor 2)
VAE_SCALE_FACTOR = 2
TEXT_HIDDEN = 32  # CLIP hidden size of the tiny text encoders


@dataclass(frozen=True)
class StaticShape:
    """Shapes to declare as if compiled by optimum-neuron (pixels and per-call counts)."""

    width: int = TINY_SIDE
    height: int = TINY_SIDE
    batch_size: int = 1
    num_images_per_prompt: int = 1


def _write_tokenizer(directory: Path) -> None:
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=True))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(str(directory))


def build_tiny_model(out_dir: Path, static: StaticShape | None = None) -> Path:
    """Build the tiny SD pipeline into a temporary directory, then move it into place (never a
    half-written model)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    def make(tokenizer: Any) -> Any:
        unet = _tiny_unet(cross_attention_dim=32)
        vae = _tiny_vae()
        text_encoder = _tiny_text_encoder(CLIPTextModel, tokenizer)
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    return _build(out_dir, make, static)


def build_tiny_sdxl_model(out_dir: Path) -> Path:
    """The tiny SDXL pipeline: two CLIP text encoders (the second with a projection), a UNet with
    SDXL's text-time conditioning, Euler scheduler. Same tokenizer for both encoders."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def make(tokenizer: Any) -> Any:
        unet = _tiny_unet(
            cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,  # 6 time ids x 8 + pooled text
        )
        vae = _tiny_vae()
        text_encoder = _tiny_text_encoder(CLIPTextModel, tokenizer)
        text_encoder_2 = _tiny_text_encoder(CLIPTextModelWithProjection, tokenizer, projection_dim=TEXT_HIDDEN)
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        )
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )

    return _build(out_dir, make, None)


def _build(out_dir: Path, make: Callable[[Any], Any], static: StaticShape | None) -> Path:
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        tmp_path = Path(tmp)
        _write_tokenizer(tmp_path / "tokenizer-src")
        pipe = make(CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer-src")))
        staged = tmp_path / "model"
        pipe.save_pretrained(str(staged), safe_serialization=True)
        if static is not None:
            declare_static_shape(staged, static)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        for path in staged.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        staged.chmod(0o755)
        staged.rename(out_dir)
    return out_dir


def _tiny_unet(**options: Any) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=TINY_SIDE // VAE_SCALE_FACTOR,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        **options,
    )


def _tiny_vae() -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=TINY_SIDE,
    )


def _tiny_text_encoder(model_class: Any, tokenizer: Any, **options: Any) -> Any:
    import torch
    from transformers import CLIPTextConfig

    torch.manual_seed(0)
    return model_class(
        CLIPTextConfig(
            bos_token_id=len(tokenizer) - 2,
            eos_token_id=len(tokenizer) - 1,
            pad_token_id=len(tokenizer) - 1,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            **options,
        )
    )


def declare_static_shape(model_dir: Path, shape: StaticShape) -> None:
    """Write the ``neuron`` sections optimum-neuron writes when it compiles these shapes."""
    latent_h, latent_w = shape.height // VAE_SCALE_FACTOR, shape.width // VAE_SCALE_FACTOR
    common: dict[str, Any] = {
        "compiler_type": "none (simulated static shape)",
        "compiler_version": "none (diffusion-queue tiny model, not compiled)",
        "auto_cast": None,
        "auto_cast_type": None,
        "static_sequence_length": 77,
    }
    sections = {
        "unet": {
            **common,
            "static_batch_size": shape.batch_size * shape.num_images_per_prompt,
            "static_height": latent_h,
            "static_width": latent_w,
            "static_num_channels": 4,
            "static_vae_scale_factor": VAE_SCALE_FACTOR,
        },
        "text_encoder": {**common, "static_batch_size": shape.batch_size},
        "vae": {
            **common,
            "static_batch_size": shape.batch_size * shape.num_images_per_prompt,
            "static_height": latent_h,
            "static_width": latent_w,
        },
    }
    for component, section in sections.items():
        config_path = model_dir / component / "config.json"
        config = json.loads(config_path.read_text())
        config["neuron"] = section
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


EMBEDDED_MODEL = "tiny-sd"  # the default model, built on demand rather than shipped


def ensure_embedded_model(models_dir: Path, name: str) -> None:
    """Build the embedded model when ``name`` is it and it is missing; other models are the
    operator's to compile."""
    if name == EMBEDDED_MODEL:
        ensure_tiny_model(models_dir / name)


def ensure_tiny_model(out_dir: Path, static: StaticShape | None = None) -> Path:
    if (out_dir / "model_index.json").is_file():
        return out_dir
    return build_tiny_model(out_dir, static)
