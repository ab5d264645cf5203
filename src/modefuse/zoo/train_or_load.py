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
from .training import evaluate, train


def _describe(v):
    """A stable description of a training argument for the recipe (no memory addresses)."""
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    if dataclasses.is_dataclass(v):
        return repr(v)
    return getattr(v, "__qualname__", type(v).__name__)


def trained(path: str | os.PathLike, model: str, train_data, *, seed: int, epochs: int, lr: float = 1e-3,
            optimizer: str = "adam", test_data=None, progress: bool = True, model_kwargs: dict | None = None,
            **train_kwargs: Any) -> nn.Module:
    """The zoo model `model` trained by this recipe, loaded from `path` if it was trained before."""
    recipe = {"model": model, "model_kwargs": model_kwargs or {}, "seed": seed, "epochs": epochs, "lr": lr,
              "optimizer": optimizer, "dataset": getattr(train_data, "name", ""), "n_train": len(train_data),
              **{k: _describe(v) for k, v in train_kwargs.items()}}
    path = Path(path)
    if path.is_file():
        found = checkpoint.read_metadata(path).get("recipe")
        if found != recipe:
            raise ModefuseError(f"{path} holds a model trained by another recipe ({found} instead of {recipe}); "
                                f"remove it or choose another output directory")
        return checkpoint.load(path)
    net = models.build_for(model, train_data, seed=seed, **(model_kwargs or {}))
    history = train(net, train_data, epochs=epochs, lr=lr, seed=seed, optimizer=optimizer, progress=progress,
                    resume=path.with_name(path.name + ".train-state"), **train_kwargs)
    metrics = evaluate(net, test_data) if test_data is not None else {}
    checkpoint.save(net, path, recipe=recipe, dataset=recipe["dataset"], seed=seed, metrics=metrics,
                    history=history)
    net.checkpoint_metadata = checkpoint.read_metadata(path)
    return net
