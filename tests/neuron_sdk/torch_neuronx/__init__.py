"""Test-only stand-in for ``torch_neuronx`` (the Neuron SDK's PyTorch plugin). Verified only on inf2.

optimum-neuron 0.4.5 imports it unconditionally (``modeling_diffusion.py``) and wraps the UNet in
``DataParallel(model, [0, 1])``. This stand-in keeps that contract on the CPU and nothing more:
the batch is split along dim 0 into one chunk per core, each chunk runs the same module, the
outputs are concatenated, and a batch that does not divide evenly is refused when dynamic
batching is off (a compiled NEFF has one batch size). It never compiles (``trace`` raises) and
never touches a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torch_neuronx import experimental  # noqa: F401  (optimum-neuron reads torch_neuronx.experimental)

__version__ = "2.8.0.2.10.16998+cpu.stand.in"


class DataParallel(torch.nn.Module):
    """The batch split across NeuronCores, run one chunk after another on the CPU."""

    def __init__(
        self,
        module: torch.nn.Module,
        device_ids: Sequence[int] | None = None,
        dim: int = 0,
        set_dynamic_batching: bool = True,
    ) -> None:
        super().__init__()
        self.module = module
        self.device_ids = list(device_ids) if device_ids is not None else [0, 1]
        self.dim = dim
        self.dynamic_batching = set_dynamic_batching

    def forward(self, *inputs: Any) -> Any:
        cores = len(self.device_ids)
        batch = _batch_size(inputs, self.dim)
        if batch % cores and not self.dynamic_batching:
            raise RuntimeError(
                f"DataParallel (stand-in): batch {batch} does not divide over {cores} NeuronCores "
                "and dynamic batching is off"
            )
        chunks = [_chunk(inputs, core, cores, self.dim) for core in range(cores)]
        return _concat([self.module(*chunk) for chunk in chunks if _batch_size(chunk, self.dim)], self.dim)


def _batch_size(inputs: tuple[Any, ...], dim: int) -> int:
    for value in inputs:
        if isinstance(value, torch.Tensor):
            return int(value.shape[dim])
    raise ValueError("DataParallel (stand-in): no tensor input to split")


def _chunk(inputs: tuple[Any, ...], index: int, count: int, dim: int) -> tuple[Any, ...]:
    return tuple(
        value.tensor_split(count, dim)[index] if isinstance(value, torch.Tensor) else value for value in inputs
    )


def _concat(outputs: list[Any], dim: int) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs, dim)
    if isinstance(first, dict):
        return {key: _concat([out[key] for out in outputs], dim) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([out[i] for out in outputs], dim) for i in range(len(first)))
    return first


def move_trace_to_device(trace: torch.jit.ScriptModule, device_id: int) -> torch.jit.ScriptModule:
    """Weights stay where they are: there is no device here."""
    return trace


def trace(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("torch_neuronx.trace needs neuronx-cc and a Neuron device: not available in this stand-in")
