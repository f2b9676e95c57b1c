"""Model capabilities come from the artifact; shape rules are enforced from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.capabilities import ModelCatalog, read_model, resolve_shape


def test_dynamic_tiny_model(models_dir: Path) -> None:
    info = read_model(models_dir / "tiny-sd")
    assert info.backend == "diffusers"
    assert info.pipeline_class == "StableDiffusionPipeline"
    assert info.vae_scale_factor == 2
    assert (info.default_width, info.default_height) == (64, 64)
    assert not info.static and not info.requires_guidance_above_one


def test_static_shape_is_read_from_the_neuron_section(models_dir: Path) -> None:
    info = read_model(models_dir / "tiny-static")
    assert info.static
    # latent 32 x VAE scale factor 2 = 64 pixels; UNet batch 2 / text-encoder batch 1 = 2 images
    assert (info.widths, info.heights, info.num_images) == ((64,), (64,), (2,))
    assert info.requires_guidance_above_one
    unet_config = json.loads((models_dir / "tiny-static" / "unet" / "config.json").read_text())
    assert unet_config["neuron"]["static_height"] == 32


def test_compiled_neuron_layout_is_detected(tmp_path: Path) -> None:
    """An optimum-neuron export: model.neuron graphs, `neuron` sections, latent static sizes."""
    root = tmp_path / "sdxl"
    (root / "unet").mkdir(parents=True)
    (root / "text_encoder").mkdir()
    (root / "vae_decoder").mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    neuron = {
        "static_batch_size": 2,
        "static_height": 128,
        "static_width": 128,
        "compiler_version": "2.21",
        "auto_cast": "matmul",
        "auto_cast_type": "bf16",
    }
    (root / "unet" / "config.json").write_text(json.dumps({"sample_size": 128, "neuron": neuron}))
    (root / "unet" / "model.neuron").write_bytes(b"")
    (root / "text_encoder" / "config.json").write_text(json.dumps({"neuron": {"static_batch_size": 1}}))
    (root / "vae_decoder" / "config.json").write_text(json.dumps({"block_out_channels": [128, 256, 512, 512]}))
    info = read_model(root)
    assert info.backend == "neuron"
    assert (info.widths, info.heights, info.num_images) == ((1024,), (1024,), (2,))
    assert (info.compiler_version, info.auto_cast, info.auto_cast_type) == ("2.21", "matmul", "bf16")
    assert info.requires_guidance_above_one


def test_resolve_fills_compiled_defaults(models_dir: Path) -> None:
    info = read_model(models_dir / "tiny-static")
    shape, errors = resolve_shape(info, None, None, None, 7.5)
    assert errors == [] and shape is not None
    assert (shape.width, shape.height, shape.num_images) == (64, 64, 2)


@pytest.mark.parametrize(
    ("width", "height", "num_images", "guidance", "fields"),
    [
        (128, None, None, 7.5, ["width"]),
        (None, 72, None, 7.5, ["height"]),
        (None, None, 1, 7.5, ["num_images"]),
        (None, None, None, 1.0, ["guidance_scale"]),
        (512, 512, 4, 0.0, ["width", "height", "num_images", "guidance_scale"]),
    ],
)
def test_static_shape_errors_list_allowed_values(
    models_dir: Path, width: int | None, height: int | None, num_images: int | None, guidance: float, fields: list[str]
) -> None:
    info = read_model(models_dir / "tiny-static")
    shape, errors = resolve_shape(info, width, height, num_images, guidance)
    assert shape is None
    assert [e.field for e in errors] == fields
    assert all("64" in e.message or "num_images" in e.message or "guidance" in e.message for e in errors)


def test_dynamic_model_range(models_dir: Path) -> None:
    info = read_model(models_dir / "tiny-sd")
    assert resolve_shape(info, 128, 96, 3, 0.0)[1] == []
    _, errors = resolve_shape(info, 4096, 56, 1, 7.5)
    assert [e.field for e in errors] == ["width", "height"]


def test_catalog_lists_pipeline_directories_only(models_dir: Path, tmp_path: Path) -> None:
    catalog = ModelCatalog(models_dir)
    assert {m.name for m in catalog.all()} >= {"tiny-sd", "tiny-static", "tiny-broken"}
    assert catalog.get("nope") is None
    empty = ModelCatalog(tmp_path / "missing")
    assert empty.all() == []
