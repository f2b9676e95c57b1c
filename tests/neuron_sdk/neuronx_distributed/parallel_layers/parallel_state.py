"""Test-only stand-in for ``neuronx_distributed.parallel_layers.parallel_state`` (imported, never used for SD)."""
