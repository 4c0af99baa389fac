"""The shared run machinery: one Run object per training script (see run.py for the loop it expects)."""

from omni.training.run import Run
from omni.training.schedule import adamw

__all__ = ["Run", "adamw"]
