"""Pipeline backends behind one interface (``worker.pipelines.base.Backend``).

``DQ_BACKEND`` picks one: ``auto`` (neuron for a compiled Neuron artifact, else diffusers),
``diffusers``, ``tiny`` (diffusers on the CPU, building the embedded model when missing),
``neuron``, ``emulated`` (no model: holds the "core" ``DQ_EMULATED_SECONDS``), or
``package.module:factory`` for a custom backend called as
``factory(model_path, settings)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from jobs.capabilities import ModelInfo
from jobs.settings import Settings
from worker.pipelines.base import Backend


def load_backend(spec: str, info: ModelInfo, settings: Settings) -> Backend:
    path = Path(info.path)
    if spec == "auto":
        spec = "neuron" if info.backend == "neuron" else "diffusers"
    if spec == "tiny":
        from worker.pipelines.tiny import ensure_tiny_model

        ensure_tiny_model(path)
        spec = "diffusers"
    if spec == "diffusers":
        from worker.pipelines.diffusers_backend import DiffusersBackend

        return DiffusersBackend(path, device=settings.device, torch_threads=settings.torch_threads)
    if spec == "emulated":
        from worker.pipelines.emulated import EmulatedBackend

        return EmulatedBackend(settings.emulated_seconds, settings.emulated_batch_cost, info.batch_size)
    if spec == "neuron":
        from worker.pipelines.neuron import NeuronBackend

        return NeuronBackend(path, info, torch_threads=settings.torch_threads)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        backend: Backend = factory(path, settings)
        return backend
    raise ValueError(f"unknown backend {spec!r}: use auto, diffusers, tiny, neuron or module:factory")
