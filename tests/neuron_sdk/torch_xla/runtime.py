"""Test-only stand-in for ``torch_xla.runtime`` (empty: imported by optimum-neuron, never called on this path)."""
