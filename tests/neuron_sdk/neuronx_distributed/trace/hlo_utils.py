"""Test-only stand-in for ``neuronx_distributed.trace.hlo_utils`` (imported, never used for SD)."""

NXD_LAYOUT_TRANSFORMATION_OPTIONS = "NXD_LAYOUT_TRANSFORMATION_OPTIONS"
