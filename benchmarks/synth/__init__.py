"""The synthetic driving world: procedural scenes, exact flow, real on-disk layouts."""
from .world import PRESETS, Preset, SyntheticWorld

__all__ = ["PRESETS", "Preset", "SyntheticWorld"]
