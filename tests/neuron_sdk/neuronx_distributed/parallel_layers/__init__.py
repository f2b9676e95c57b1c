"""Test-only stand-in for ``neuronx_distributed.parallel_layers`` (imported, never used for SD)."""

from neuronx_distributed.parallel_layers import parallel_state  # noqa: F401
