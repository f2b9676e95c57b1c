"""Test-only stand-in for ``neuronx_distributed``. Verified only on inf2.

Imported at module level by optimum-neuron's exporter (``exporters/neuron/config.py``,
``convert.py``, ``model_configs.py``, ``model_wrappers.py``), which the pipeline classes import.
Only the names those imports bind exist; tensor-parallel tracing is not available.
"""

from neuronx_distributed import parallel_layers, trace  # noqa: F401
