"""Test-side name for the synthetic generator (lives in :mod:`aniso.synthetic`)."""

from aniso.synthetic import PlantedGap, planted_gap

__all__ = ["PlantedGap", "planted_gap"]
