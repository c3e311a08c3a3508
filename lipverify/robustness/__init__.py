"""What the bound is for: margin (logit-difference) bounds and certified robust accuracy."""

from .forward import forward_enclosure, sound_margins
from .margins import MarginBounds, margin_bounds
from .report import RobustnessReport, certified_robustness, load_dataset

__all__ = ["MarginBounds", "RobustnessReport", "certified_robustness", "forward_enclosure",
           "load_dataset", "margin_bounds", "sound_margins"]
