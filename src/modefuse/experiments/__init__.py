"""The three papers' experiments, reproducible by name: `modefuse reproduce NAME`."""
from .runner import PRESETS, REGISTRY, Run, experiment, reproduce

__all__ = ["PRESETS", "REGISTRY", "Run", "experiment", "reproduce"]
