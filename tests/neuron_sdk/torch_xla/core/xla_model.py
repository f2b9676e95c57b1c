"""Test-only stand-in for ``torch_xla.core.xla_model`` (empty: imported by optimum-neuron, not called here)."""
