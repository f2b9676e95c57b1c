"""Test-only stand-in for ``torch_neuronx.experimental``. Verified only on inf2."""

from __future__ import annotations

from typing import Any


def set_neuron_cores(model: Any, start_nc: int = -1, nc_count: int = -1) -> None:
    """Pins a loaded NEFF to cores on inf2; nothing to pin on the CPU."""
