"""The real optimum-neuron pipeline classes, driven by our ``neuron`` backend unchanged, on
emulated artifacts (``worker.pipelines.neuron_export``), with the Neuron SDK stood in for by
``tests/neuron_sdk`` (see docs/neuron.md for what that does and does not show)."""

from __future__ import annotations

import io
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from jobs.capabilities import read_model
from tests.neuron_fixtures import NEURON_WARNING_FILTERS, emulated_models, optimum_neuron, single_threaded  # noqa: F401
from worker.pipelines.base import GenerationRequest
from worker.pipelines.neuron import NeuronBackend

pytestmark = [
    *(pytest.mark.filterwarnings(f) for f in NEURON_WARNING_FILTERS),
    pytest.mark.usefixtures("single_threaded"),
]


class Stop(Exception):
    """What the runner's step callback raises on a cancel."""


class Counting(torch.nn.Module):
    """Counts the calls into a loaded module (the UNet's DataParallel, the VAE decoder)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args: Any) -> Any:
        self.calls += 1
        return self.inner(*args)


def request(**change: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "prompt": "a pig with wings",
        "negative_prompt": "blurry",
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "seed": 11,
        "width": 64,
        "height": 64,
        "num_images": 1,
    }
    return GenerationRequest(**{**values, **change})


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run(backend: NeuronBackend, **change: Any) -> tuple[list[Image.Image], list[int]]:
    steps: list[int] = []
    images = backend.generate(request(**change), steps.append)
    return images, steps


@pytest.fixture(scope="module")
def sd(optimum_neuron: Any, emulated_models: dict[str, Path]) -> Iterator[NeuronBackend]:  # noqa: F811
    path = emulated_models["tiny-neuron"]
    started = time.perf_counter()
    backend = NeuronBackend(path, read_model(path))
    print(f"tiny-neuron: NeuronStableDiffusionPipeline.from_pretrained {time.perf_counter() - started:.2f}s")
    yield backend
    backend.close()


def test_the_real_class_loads_the_emulated_artifact(sd: NeuronBackend, optimum_neuron: Any) -> None:  # noqa: F811
    import torch_neuronx

    pipe = sd.pipe
    assert type(pipe) is optimum_neuron.NeuronStableDiffusionPipeline
    assert pipe.data_parallel_mode == "unet"  # set by the library (set_parallel_mode), not by us
    assert isinstance(pipe.unet.model, torch_neuronx.DataParallel) and pipe.unet.model.device_ids == [0, 1]
    assert isinstance(pipe.text_encoder.model, torch.jit.ScriptModule)
    assert pipe.num_images_per_prompt == 1 and pipe.vae_scale_factor == 2


def test_generation_reports_every_step_and_is_reproducible(sd: NeuronBackend) -> None:
    started = time.perf_counter()
    first, steps = run(sd, seed=11)
    print(f"4-step call {time.perf_counter() - started:.2f}s")
    again, _ = run(sd, seed=11)
    other, _ = run(sd, seed=12)
    assert steps == [1, 2, 3, 4]
    assert [image.size for image in first] == [(64, 64)]
    assert png(first[0]) == png(again[0]) and png(first[0]) != png(other[0])


@pytest.mark.parametrize(("scheduler", "callbacks"), [("pndm", 5), ("heun", 7), ("euler", 4), (None, 4)])
def test_progress_never_passes_the_total(sd: NeuronBackend, scheduler: str | None, callbacks: int) -> None:
    """diffusers calls back once per scheduler timestep: PNDM steps + 1, Heun 2 × steps - 1."""
    calls = Counting(sd.pipe.unet.model)
    sd.pipe.unet.model = calls
    try:
        _, steps = run(sd, scheduler=scheduler, num_inference_steps=4)
    finally:
        sd.pipe.unet.model = calls.inner
    assert len(steps) == callbacks == calls.calls
    assert steps == sorted(steps) and max(steps) == 4 and steps.count(4) == 1 and steps[-1] == 4


def test_cancel_stops_at_the_next_step_before_the_vae(sd: NeuronBackend) -> None:
    unet, decoder = Counting(sd.pipe.unet.model), Counting(sd.pipe.vae_decoder.model)
    sd.pipe.unet.model, sd.pipe.vae_decoder.model = unet, decoder
    seen: list[int] = []
    cancel = [False]

    def on_step(step: int) -> None:
        seen.append(step)
        if cancel[0]:
            raise Stop
        cancel[0] = step == 2  # the cancel arrives during step 3

    try:
        with pytest.raises(Stop):
            sd.generate(request(num_inference_steps=10), on_step)
    finally:
        sd.pipe.unet.model, sd.pipe.vae_decoder.model = unet.inner, decoder.inner
    assert seen == [1, 2, 3] and unet.calls == 3 and decoder.calls == 0


def test_static_shapes_hold_as_on_inf2(sd: NeuronBackend) -> None:
    pipe = sd.pipe
    # The class ignores height / width: it renders the compiled shape.
    (image,) = pipe(prompt="x", height=128, width=128, num_inference_steps=1).images
    assert image.size == (64, 64)
    # A batch the artifact was not compiled for fails inside the traced module, as a NEFF does.
    with pytest.raises(torch.jit.Error, match=r"input sample is compiled for static shape \[1, 4, 32, 32\]"):
        pipe(prompt="x", num_images_per_prompt=2, num_inference_steps=1)
    # guidance <= 1: no CFG, so the UNet batch of 1 cannot be split over the core pair.
    with pytest.raises(RuntimeError, match="does not divide over 2 NeuronCores"):
        pipe(prompt="x", guidance_scale=1.0, num_inference_steps=1)
    # What the API refuses, the backend refuses too, before running anything.
    with pytest.raises(ValueError, match="compiled for 64x64, not 128x64"):
        sd.generate(request(width=128), lambda step: None)


def test_a_static_batch_of_two_runs_one_generator_per_image(
    optimum_neuron: Any,  # noqa: F811
    emulated_models: dict[str, Path],  # noqa: F811
) -> None:
    path = emulated_models["tiny-neuron-b2"]
    info = read_model(path)
    assert (info.batch_size, info.num_images) == (2, (2,))
    backend = NeuronBackend(path, info)
    images, steps = run(backend, num_images=2, seed=5, num_inference_steps=2)
    assert len(images) == 2 and steps == [1, 2]
    # Two prompts × two images: four generators, one per image (the UNet sees 8 latents, 4 per core).
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in (5, 6, 7, 8)]
    full = backend.pipe(
        prompt=["a pig with wings"] * 2,
        negative_prompt=["blurry"] * 2,
        num_inference_steps=2,
        num_images_per_prompt=2,
        generator=generators,
    ).images
    assert len(full) == 4 and {image.size for image in full} == {(64, 64)}
    assert [png(image) for image in full[:2]] == [png(image) for image in images]
    with pytest.raises(ValueError, match="generators"):
        backend.pipe(prompt=["x"] * 2, num_inference_steps=1, generator=generators[:3])
    backend.close()


def test_the_sdxl_variant_runs(optimum_neuron: Any, emulated_models: dict[str, Path]) -> None:  # noqa: F811
    path = emulated_models["tiny-neuron-sdxl"]
    backend = NeuronBackend(path, read_model(path))
    assert type(backend.pipe) is optimum_neuron.NeuronStableDiffusionXLPipeline
    assert backend.pipe.text_encoder_2 is not None
    images, steps = run(backend, num_inference_steps=3, scheduler="dpmpp_2m_karras")
    assert [image.size for image in images] == [(64, 64)] and steps == [1, 2, 3]
    backend.close()


def test_the_scheduler_is_swapped_without_reloading(sd: NeuronBackend) -> None:
    pipe = sd.pipe
    unet, default = pipe.unet, pipe.scheduler
    own, _ = run(sd, seed=3, num_inference_steps=3)
    euler_a, _ = run(sd, seed=3, num_inference_steps=3, scheduler="euler_a")
    built = pipe.scheduler
    assert type(built).__name__ == "EulerAncestralDiscreteScheduler" and png(euler_a[0]) != png(own[0])
    back, _ = run(sd, seed=3, num_inference_steps=3)
    assert pipe.scheduler is default and png(back[0]) == png(own[0])
    run(sd, num_inference_steps=1, scheduler="euler_a")
    assert pipe.scheduler is built and pipe.unet is unet  # built once, kept; nothing reloaded


def test_emulated_export_matches_optimum_neurons_own_exporter(
    optimum_neuron: Any,  # noqa: F811
    emulated_models: dict[str, Path],  # noqa: F811
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """optimum-cli export neuron, with only neuronx-cc's trace swapped for torch.jit.trace,
    writes the same files, the same configs and modules computing the same outputs."""
    import torch_neuronx
    from optimum.exporters.neuron.__main__ import main

    def jit_trace(model: Any, example_inputs: Any, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return torch.jit.trace(model, example_inputs, strict=False, check_trace=False)

    monkeypatch.setattr(torch_neuronx, "trace", jit_trace)
    monkeypatch.setattr(torch_neuronx, "async_load", lambda model: None, raising=False)
    monkeypatch.setattr(torch_neuronx, "lazy_load", lambda model: None, raising=False)
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE", raising=False)
    reference = tmp_path / "reference"
    argv = ["optimum-cli", "--model", str(models_dir / "tiny-sd"), "--task", "text-to-image"]
    argv += ["--batch_size", "2", "--num_images_per_prompt", "2", "--height", "64", "--width", "64"]
    argv += ["--auto_cast", "matmul", "--auto_cast_type", "bf16", "--instance_type", "inf2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--disable_neuron_cache", str(reference)])
    main()
    emulated = emulated_models["tiny-neuron-b2"]
    assert files(emulated) == files(reference)
    for name in files(reference):
        if name.endswith(".json"):
            assert comparable(emulated / name) == comparable(reference / name), name
    for component in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        assert_same_outputs(emulated / component, reference / component)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def comparable(path: Path) -> dict[str, Any]:
    """The JSON minus what differs by design: the source path and the compiler (none here)."""
    data: dict[str, Any] = json.loads(path.read_text())
    data.pop("_name_or_path", None)
    for key in ("compiler_type", "compiler_version"):
        data.get("neuron", {}).pop(key, None)
    return data


def assert_same_outputs(emulated: Path, reference: Path) -> None:
    section = json.loads((reference / "config.json").read_text())["neuron"]
    batch = section["static_batch_size"]
    generator = torch.Generator().manual_seed(0)
    if section["model_type"] == "clip-text-model":
        inputs: tuple[torch.Tensor, ...] = (torch.randint(0, 500, (batch, section["static_sequence_length"])),)
    elif section["model_type"] == "unet":
        latent = (section["static_num_channels"], section["static_height"], section["static_width"])
        hidden = (section["static_sequence_length"], 32)
        inputs = (torch.randn(batch, *latent, generator=generator), torch.full((batch,), 500.0))
        inputs += (torch.randn(batch, *hidden, generator=generator),)
    else:
        shape = (section["static_num_channels"], section["static_height"], section["static_width"])
        inputs = (torch.randn(batch, *shape, generator=generator),)
    ours = torch.jit.load(str(emulated / "model.neuron"))(*inputs)
    theirs = torch.jit.load(str(reference / "model.neuron"))(*inputs)
    assert flat(ours).keys() == flat(theirs).keys()
    for key, value in flat(theirs).items():
        torch.testing.assert_close(flat(ours)[key], value, msg=f"{emulated.name} output {key}")


def flat(output: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return {prefix: output}
    items = output.items() if isinstance(output, dict) else enumerate(output)
    return {k: v for key, value in items for k, v in flat(value, f"{prefix}/{key}").items()}
