"""Trained zoo models by recipe: trained once, then read back from their checkpoint.

Demos and experiments call `trained(...)`: a finished model is reused, never
retrained, and an interrupted one resumes from its per-epoch training state.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import nn

from . import checkpoint
from . import models
from ..errors import ModefuseError
from .recipe import Recipe, recipe_of
from .training import evaluate, train


def _describe(v):
    """A stable description of a training argument for the recipe (no memory addresses)."""
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    if dataclasses.is_dataclass(v):
        return repr(v)
    return getattr(v, "__qualname__", type(v).__name__)


def trained(path: str | os.PathLike, model: str, train_data, recipe: Recipe | None = None, *, test_data=None,
            progress: bool = True, model_kwargs: dict | None = None, perturb=None, **fields: Any) -> nn.Module:
    """The zoo model `model` trained by `recipe` (fields given by name replace the recipe's), loaded from
    `path` if it was trained by the same recipe before; a file trained otherwise is refused, never overwritten."""
    r = recipe_of(recipe, **fields)
    described = {"model": model, "model_kwargs": model_kwargs or {}, "seed": r.seed, "epochs": r.epochs,
                 "lr": r.lr, "optimizer": r.optimizer, "dataset": getattr(train_data, "name", ""),
                 "n_train": len(train_data), **r.changes()}
    if perturb is not None:
        described["perturb"] = _describe(perturb)
    path = Path(path)
    if path.is_file():
        found = checkpoint.read_metadata(path).get("recipe")
        if found != described:
            raise ModefuseError(f"{path} holds a model trained by another recipe ({found} instead of {described}); "
                                f"remove it or choose another output directory")
        return checkpoint.load(path)
    net = models.build_for(model, train_data, seed=r.seed, **(model_kwargs or {}))
    history = train(net, train_data, r, progress=progress, perturb=perturb,
                    resume=path.with_name(path.name + ".train-state"))
    metrics = evaluate(net, test_data) if test_data is not None else {}
    checkpoint.save(net, path, recipe=described, dataset=described["dataset"], seed=r.seed, metrics=metrics,
                    history=history)
    net.checkpoint_metadata = checkpoint.read_metadata(path)
    return net
