"""The three papers' experiments, reproducible by name: `modefuse reproduce NAME`.

Importing the package registers every experiment (each module adds itself to `base.REGISTRY`).
"""
from . import curves, federated, lmc_width, vit, wb  # noqa: F401  (they register themselves)
from .base import PRESETS, REGISTRY, Run, experiment
from .runner import reproduce

__all__ = ["PRESETS", "REGISTRY", "Run", "experiment", "reproduce"]
