"""Test-only stand-in for ``neuronx_distributed.trace.model_builder``. Verified only on inf2.

optimum-neuron checks ``isinstance(model, BaseModelInstance)`` (false for SD components) and
builds a ``ModelBuilder`` only for NxD models, which cannot run here.
"""

from typing import Any


class BaseModelInstance:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("NxD model instances need the Neuron SDK: not available in this stand-in")


class ModelBuilder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("NxD ModelBuilder needs the Neuron SDK: not available in this stand-in")
