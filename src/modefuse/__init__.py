"""modefuse: align, fuse and connect independently trained neural networks.

The public API, re-exported from the packages that define it (one package per concern):
`zoo` (models, data, training, checkpoints), `spec` (permutation specs and their inference),
`match` (alignment), `merge` (fusion, REPAIR), `landscape` (paths, planes, curves), `hf`
(Hugging Face folders), `federated` (Flower), `experiments` (the papers' experiments).
"""
from __future__ import annotations

from . import _moved
from .errors import (ArchitectureMismatchError, CheckpointError, DataNotFoundError, InvalidArgumentError,
                     ModefuseError, SpecInferenceError)
from .version import __version__
from .zoo import data, models
from .zoo.checkpoint import load, read_metadata, save
from .zoo.recipe import Recipe
from .zoo.training import evaluate, train

from .spec import rules
from .spec.infer import infer_spec
from .spec.permutation_spec import Layout, PermutationSpec
from .spec.rules import register_rule
from .spec.transport import permute

from .match.align import Alignment, align

from .merge.bn import reset_bn
from .merge.fuse import fuse
from .merge.methods import Fusion
from .merge.repair import repair

from .landscape.attack import PGD, robust_accuracy
from .landscape.curves import Curve, fit_curve, load_curve, pam
from .landscape.interpolate import PathMetrics, interpolate
from .landscape.plane import Plane, plane

from . import hf
from .storage import lazystate

_moved.install()

# renamed public names, kept for one release: old name -> (new name, the object)
_RENAMED = {"Path": ("PathMetrics", PathMetrics)}


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings
        new, obj = _RENAMED[name]
        warnings.warn(f"mf.{name} is now mf.{new} (the old name goes in the next release)", DeprecationWarning,
                      stacklevel=2)
        return obj
    raise AttributeError(f"module 'modefuse' has no attribute {name!r}")

__all__ = [
    "__version__", "data", "models", "Recipe", "train", "evaluate", "save", "load", "read_metadata",
    "ModefuseError", "DataNotFoundError", "CheckpointError", "ArchitectureMismatchError", "SpecInferenceError",
    "InvalidArgumentError",
    "infer_spec", "register_rule", "rules", "PermutationSpec", "Layout", "permute",
    "align", "Alignment",
    "reset_bn", "interpolate", "PathMetrics",
    "fuse", "Fusion", "repair",
    "PGD", "robust_accuracy", "Curve", "fit_curve", "load_curve", "pam",
    "plane", "Plane",
    "hf", "lazystate",
]
