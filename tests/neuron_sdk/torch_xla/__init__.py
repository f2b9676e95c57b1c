"""Test-only stand-in for ``torch_xla``: empty modules, imported by optimum-neuron's compile cache.

Verified only on inf2. ``USE_TORCH_XLA=0`` must be set before accelerate is imported, or
accelerate takes these empty modules for a real XLA runtime.
"""
