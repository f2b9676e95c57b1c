"""Test-only stand-in for ``torch_xla.core`` (empty)."""
