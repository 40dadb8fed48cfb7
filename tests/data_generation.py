"""Test-side name for the synthetic generator (lives in :mod:`aniso.testing.synthetic`)."""

from aniso.testing.synthetic import PlantedGap, planted_gap

__all__ = ["PlantedGap", "planted_gap"]
