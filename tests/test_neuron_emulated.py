"""``dq compile --tiny --emulate-neuron``: the command line, the layout and ``neuron`` sections
an emulated artifact carries, and the static-shape guard in its traced modules. No optimum-neuron
here: tests/test_neuron_pipeline.py runs the real classes on these artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.capabilities import read_model
from tests.neuron_fixtures import NEURON_WARNING_FILTERS, emulated_models, single_threaded  # noqa: F401
from worker.pipelines.neuron_export import EMULATED_COMPILER_VERSION, NEURON_FILE_NAME

pytestmark = [
    *(pytest.mark.filterwarnings(f) for f in NEURON_WARNING_FILTERS),
    pytest.mark.usefixtures("single_threaded"),
]
SDXL_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder")
# What optimum's store_compilation_config writes for an SD component (besides static_*).
NEURON_KEYS = {
    "compiler_type", "compiler_version", "inline_weights_to_neff", "dynamic_batch_size", "tensor_parallel_size",
    "optlevel", "auto_cast", "auto_cast_type", "instance_type", "int_dtype", "float_dtype", "model_type",
    "output_attentions", "output_hidden_states", "task",
}  # fmt: skip


def test_compile_tiny_emulate_neuron(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dq.cli import main

    monkeypatch.setenv("DQ_MODELS_DIR", str(tmp_path))
    argv = ["compile", "--tiny", "--emulate-neuron", "--num-images-per-prompt", "2", "--auto-cast", "none"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "tiny-sd-neuron" and printed["backend"] == "neuron"
    assert printed["pipeline_class"] == "StableDiffusionPipeline" and printed["default_scheduler"] == "ddim"
    assert printed["shapes"] == {"widths": [64], "heights": [64], "num_images": [2]}
    assert printed["compiler_version"] == EMULATED_COMPILER_VERSION and printed["auto_cast"] is None
    assert main([*argv, "--width", "60"]) == 2  # a multiple of 8, as for a real export
    assert "multiple of 8" in capsys.readouterr().err


def test_the_sdxl_layout_and_its_static_shape_guard(emulated_models: dict[str, Path]) -> None:  # noqa: F811
    root = emulated_models["tiny-neuron-sdxl"]
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["model_index.json", "scheduler", "tokenizer", "tokenizer_2", *SDXL_COMPONENTS]
    )
    sections = {name: json.loads((root / name / "config.json").read_text())["neuron"] for name in SDXL_COMPONENTS}
    for section in sections.values():
        assert NEURON_KEYS <= section.keys() and section["auto_cast"] == "matmul" and not section["dynamic_batch_size"]
    # As the exporter: weights inlined from SDXL's UNet on (the flag stays set for what follows).
    assert [sections[n]["inline_weights_to_neff"] for n in SDXL_COMPONENTS] == [False, False, True, True, True]
    assert sections["text_encoder_2"]["model_type"] == "clip-text-with-projection"
    unet = torch.jit.load(str(root / "unet" / NEURON_FILE_NAME))
    inputs = [torch.randn(1, 4, 32, 32), torch.ones(1), torch.randn(1, 77, 64), torch.randn(1, 32), torch.randn(1, 6)]
    (noise,) = unet(*inputs)
    assert noise.shape == (1, 4, 32, 32)
    with pytest.raises(torch.jit.Error, match=r"input time_ids is compiled for static shape \[1, 6\], got \[1, 5\]"):
        unet(*inputs[:4], torch.randn(1, 5))


def test_emulated_sections_read_as_a_compiled_model(emulated_models: dict[str, Path]) -> None:  # noqa: F811
    info = read_model(emulated_models["tiny-neuron-b2"])
    assert (info.backend, info.static, info.batch_size, info.num_images) == ("neuron", True, 2, (2,))
    assert (info.widths, info.heights, info.auto_cast, info.auto_cast_type) == ((64,), (64,), "matmul", "bf16")
    unet = json.loads((emulated_models["tiny-neuron-b2"] / "unet" / "config.json").read_text())["neuron"]
    text = json.loads((emulated_models["tiny-neuron-b2"] / "text_encoder" / "config.json").read_text())["neuron"]
    assert (unet["static_batch_size"], text["static_batch_size"]) == (4, 2)  # batch x images; batch
    decoder = torch.jit.load(str(emulated_models["tiny-neuron-b2"] / "vae_decoder" / NEURON_FILE_NAME))
    assert decoder(torch.randn(4, 4, 32, 32))["sample"].shape == (4, 3, 64, 64)
    with pytest.raises(torch.jit.Error, match="input latent_sample is compiled for static shape"):
        decoder(torch.randn(2, 4, 32, 32))
