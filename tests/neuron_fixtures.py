"""Fixtures for the Neuron tests: emulated artifacts built once per session, and optimum-neuron
importable in this process through the test-only Neuron SDK stand-ins (``tests/neuron_sdk``).

The stand-ins never reach production code: tests put the folder on ``sys.path`` (in process,
undone afterwards) or on a worker process's ``PYTHONPATH``, with ``USE_TORCH_XLA=0``.
Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

NEURON_SDK = Path(__file__).resolve().parent / "neuron_sdk"
STAND_INS = ("torch_neuronx", "neuronxcc", "neuronx_distributed", "torch_xla", "libneuronxla")
OPTIMUM_NEURON = ("optimum.neuron", "optimum.exporters.neuron", "optimum.commands")
CPU_ONLY_WARNING = "It seems this is running on a CPU-only machine"
# TorchScript is the Neuron artifact format; torch 2.13 (the CPU build) calls it deprecated.
NEURON_WARNING_FILTERS = (
    f"ignore:{CPU_ONLY_WARNING}:UserWarning",
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning",
    # numpy 2 here (inf2's stack pins numpy 1.26) on torch tensors in diffusers' sigma arithmetic
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    "ignore:__array_wrap__ must accept context and return_scalar:DeprecationWarning",
)

# name -> (width, height, batch_size, num_images_per_prompt, sdxl)
EMULATED = {
    "tiny-neuron": (64, 64, 1, 1, False),
    "tiny-neuron-b2": (64, 64, 2, 2, False),
    "tiny-neuron-sdxl": (64, 64, 1, 1, True),
}


def neuron_worker_env() -> dict[str, str]:
    """What a worker process needs to run the real pipeline classes on the CPU: the stand-ins
    first on its path, and accelerate told not to take the empty ``torch_xla`` for real XLA.
    One OpenMP thread: the neuron backend has no thread setting (on inf2 the work is on the
    cores), and spinning threads on a busy 2-core host make the tiny model several times slower."""
    path = os.pathsep.join(p for p in (str(NEURON_SDK), os.environ.get("PYTHONPATH", "")) if p)
    return {"DQ_BACKEND": "neuron", "PYTHONPATH": path, "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """The tiny models gain nothing from more threads; on a busy 2-core host OpenMP's spinning
    threads make them several times slower (seen: 21 s against 3 s for the same test)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_threaded() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def emulated_models(models_dir: Path) -> dict[str, Path]:
    """The emulated Neuron artifacts of ``EMULATED``, in the session's models directory."""
    from worker.pipelines.neuron_export import build_emulated_tiny, export_emulated
    from worker.pipelines.tiny import StaticShape

    built = {}
    with one_torch_thread():
        for name, (width, height, batch, images, sdxl) in EMULATED.items():
            shape = StaticShape(width, height, batch, images)
            out = models_dir / name
            if sdxl:
                built[name] = build_emulated_tiny(out, shape, sdxl=True)
            else:  # the session's tiny-sd is the source: no second build
                built[name] = export_emulated(models_dir / "tiny-sd", out, shape, name_or_path="tiny-sd")
    return built


@pytest.fixture(scope="module")
def optimum_neuron() -> Iterator[Any]:
    """``optimum.neuron`` with its pipeline classes imported through the stand-ins; afterwards the
    stand-ins and everything imported through them are forgotten again."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("USE_TORCH_XLA", "0")
        patch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE", raising=False)  # optimum.neuron sets it
        patch.syspath_prepend(str(NEURON_SDK))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CPU_ONLY_WARNING, category=UserWarning)
            module = importlib.import_module("optimum.neuron")
            assert module.NeuronStableDiffusionPipeline  # imports modeling_diffusion: torch_neuronx & co.
        import torch_neuronx

        assert Path(torch_neuronx.__file__).is_relative_to(NEURON_SDK), "never the real SDK here"
        yield module
    _forget(STAND_INS + OPTIMUM_NEURON)


def _forget(prefixes: tuple[str, ...]) -> None:
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            del sys.modules[name]
    importlib.invalidate_caches()
