"""Test-only stand-in for ``neuronx_distributed.trace``. Verified only on inf2."""

from typing import Any

from neuronx_distributed.trace import hlo_utils, model_builder  # noqa: F401


def parallel_model_trace(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("tensor-parallel tracing needs the Neuron SDK: not available in this stand-in")
