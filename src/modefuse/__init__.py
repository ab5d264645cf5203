"""modefuse: align, fuse and connect independently trained neural networks."""
from __future__ import annotations

__version__ = "0.1.0"

from . import data, models  # noqa: E402
from .checkpoint import load, read_metadata, save  # noqa: E402
from .errors import (ArchitectureMismatchError, CheckpointError, DataNotFoundError,  # noqa: E402
                     InvalidArgumentError, ModefuseError, SpecInferenceError)
from .training import evaluate, train  # noqa: E402

__all__ = [
    "__version__", "data", "models", "train", "evaluate", "save", "load", "read_metadata",
    "ModefuseError", "DataNotFoundError", "CheckpointError", "ArchitectureMismatchError", "SpecInferenceError",
    "InvalidArgumentError",
]

from . import rules  # noqa: E402
from .infer import infer_spec  # noqa: E402
from .rules import register_rule  # noqa: E402
from .spec import Layout, PermutationSpec  # noqa: E402
from .transport import permute  # noqa: E402

__all__ += ["infer_spec", "register_rule", "rules", "PermutationSpec", "Layout", "permute"]

from .align import Alignment, align  # noqa: E402

__all__ += ["align", "Alignment"]

from .bn import reset_bn  # noqa: E402
from .interpolate import Path, interpolate  # noqa: E402

__all__ += ["reset_bn", "interpolate", "Path"]

from .fuse import Fusion, fuse  # noqa: E402

__all__ += ["fuse", "Fusion"]

from .repair import repair  # noqa: E402

__all__ += ["repair"]

from .attack import PGD, robust_accuracy  # noqa: E402
from .curves import Curve, fit_curve, load_curve, pam  # noqa: E402

__all__ += ["PGD", "robust_accuracy", "Curve", "fit_curve", "load_curve", "pam"]

from .plane import Plane, plane  # noqa: E402

__all__ += ["plane", "Plane"]

from . import hf, lazystate  # noqa: E402  (Hugging Face folders; checkpoints read a tensor at a time)

__all__ += ["hf", "lazystate"]
