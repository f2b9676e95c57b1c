"""``dq compile`` and the Neuron backend's surface, off inf2: the export command it would run,
the clear refusal without optimum-neuron, and the tiny model with a declared static shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dq.compile import ExportSpec, export_command, optimum_neuron_available, valid_name
from jobs.capabilities import read_model
from worker.pipelines.neuron import INSTALL_HINT, neuron_class_name

REPO = Path(__file__).resolve().parent.parent


def test_export_command_names_every_shape_and_compiler_argument(tmp_path: Path) -> None:
    spec = ExportSpec(
        "stabilityai/stable-diffusion-xl-base-1.0", tmp_path / "sdxl", 1024, 1024, 1, 2, "matmul", "bf16", "inf2"
    )
    assert export_command(spec) == [
        "optimum-cli",
        "export",
        "neuron",
        "--model",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "--task",
        "text-to-image",
        "--batch_size",
        "1",
        "--height",
        "1024",
        "--width",
        "1024",
        "--num_images_per_prompt",
        "2",
        "--auto_cast",
        "matmul",
        "--auto_cast_type",
        "bf16",
        "--instance_type",
        "inf2",
        str(tmp_path / "sdxl"),
    ]
    no_cast = export_command(ExportSpec("m", tmp_path / "o", auto_cast="none"))
    assert "--auto_cast" not in no_cast and "--instance_type" not in no_cast


@pytest.mark.parametrize(
    "change", [{"height": 500}, {"width": 0}, {"batch_size": 0}, {"auto_cast": "some"}, {"instance_type": "inf1"}]
)
def test_export_spec_rejects_bad_values(tmp_path: Path, change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ExportSpec("m", tmp_path, **change).validate()  # type: ignore[arg-type]


def test_model_names_must_be_queue_safe() -> None:
    assert valid_name("sd15-512") == "sd15-512"
    for bad in ("", "a b", "../x", "x" * 200):
        with pytest.raises(ValueError):
            valid_name(bad)


@pytest.mark.skipif(optimum_neuron_available(), reason="optimum-neuron is installed here")
def test_compile_without_optimum_neuron_says_how_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dq", "compile", "stable-diffusion-v1-5/stable-diffusion-v1-5", "--name", "sd15"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"DQ_MODELS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "pip install -e '.[neuron]'" in result.stderr
    assert not (tmp_path / "sd15").exists()


def test_neuron_backend_refuses_clearly_without_optimum(models_dir: Path) -> None:
    from worker.pipelines.neuron import NeuronBackend

    if optimum_neuron_available():
        pytest.skip("optimum-neuron is installed here")
    with pytest.raises(RuntimeError, match="optimum-neuron is not installed"):
        NeuronBackend(models_dir / "tiny-static", read_model(models_dir / "tiny-static"))
    assert "pip.repos.neuron.amazonaws.com" in INSTALL_HINT


def test_neuron_pipeline_class_mapping() -> None:
    assert neuron_class_name("StableDiffusionXLPipeline") == "NeuronStableDiffusionXLPipeline"
    assert neuron_class_name("NeuronStableDiffusionPipeline") == "NeuronStableDiffusionPipeline"
    with pytest.raises(ValueError, match="no Optimum Neuron pipeline"):
        neuron_class_name("AudioLDMPipeline")


def test_compile_tiny_static_builds_a_model_with_the_declared_shape(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dq",
            "compile",
            "--tiny",
            "--static",
            "--name",
            "tiny-wide",
            "--width",
            "96",
            "--height",
            "64",
            "--num-images-per-prompt",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"DQ_MODELS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["shapes"] == {"widths": [96], "heights": [64], "num_images": [3]}
    info = read_model(tmp_path / "tiny-wide")
    assert (info.widths, info.heights, info.num_images, info.static) == ((96,), (64,), (3,), True)
    unet = json.loads((tmp_path / "tiny-wide" / "unet" / "config.json").read_text())["neuron"]
    assert (unet["static_width"], unet["static_height"], unet["static_batch_size"]) == (48, 32, 3)


def test_tiny_build_is_deterministic(tmp_path: Path, models_dir: Path) -> None:
    from worker.pipelines.tiny import build_tiny_model

    build_tiny_model(tmp_path / "again")
    for weights in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
    ):
        assert (tmp_path / "again" / weights).read_bytes() == (models_dir / "tiny-sd" / weights).read_bytes()
