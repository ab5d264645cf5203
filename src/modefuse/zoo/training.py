"""Training and evaluation: deterministic per seed on CPU, resumable, with a progress bar."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from . import checkpoint
from .batching import batches
from ..checks import optional_positive_int, positive_int
from ..errors import ModefuseError
from .models import check_input
from .recipe import Recipe, recipe_of
from ..progress import bar, write

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def train(model: nn.Module, dataset, recipe: Recipe | None = None, *, epochs: int | None = None,
          lr: float | None = None, seed: int | None = None, optimizer: str | None = None,
          batch_size: int | None = None, schedule: str | None = None, momentum: float | None = None,
          weight_decay: float | None = None, eval_data=None, resume: str | os.PathLike | None = None,
          progress: bool = True, loss_fn: LossFn | None = None,
          perturb: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          limit: int | None = None) -> list[dict[str, Any]]:
    """Train `model` in place; return one dict of metrics per epoch.

    The one training loop of the library: zoo models, curves (`CurveModule`) and PAM are trained here.
    The same seed gives the same weights on CPU: batch order and dropout are seeded per epoch, so a run
    resumed from `resume` ends where an uninterrupted run would. A non-finite loss stops training with
    an error naming the epoch and batch.

    Parameters
    ----------
    model : nn.Module
        Trained in place.
    dataset : Dataset or batches
        (inputs, targets) pairs.
    recipe : Recipe, optional
        Epochs, learning rate and schedule, optimizer, batch size, seed (default: `Recipe()`: 5 epochs
        of Adam at 1e-3, cosine schedule, batches of 128, seed 0).
    epochs, lr, seed, optimizer, batch_size, schedule, momentum, weight_decay
        Replace the recipe's field of that name.
    eval_data : optional
        Adds test metrics to each epoch's row.
    resume : path, optional
        A training-state file written after every epoch (removed when training ends).
    progress : bool
        A bar per epoch on a terminal, a line per epoch elsewhere.
    loss_fn : callable, optional
        loss_fn(outputs, targets); default cross-entropy.
    perturb : callable, optional
        perturb(model, x, y) replaces each input batch (adversarial training).
    limit : int, optional
        At most that many examples per epoch.

    Returns
    -------
    list of dict
        Per epoch: train loss and accuracy, seconds, examples per second (and test metrics).
    """
    r = recipe_of(recipe, epochs=epochs, lr=lr, seed=seed, optimizer=optimizer, batch_size=batch_size,
                  schedule=schedule, momentum=momentum, weight_decay=weight_decay)
    limit = optional_positive_int(limit, "limit")
    loss_fn = loss_fn or F.cross_entropy
    device = _device_of(model)
    opt = r.make_optimizer(model.parameters())
    history: list[dict[str, Any]] = []
    start = 0
    if resume is not None and Path(resume).is_file():
        info = checkpoint.load_state(resume, model, opt)
        history, start = info.get("history", []), int(info.get("epoch", 0))
        if progress:
            write(f"resuming from {resume} after epoch {start}")
    n_examples = _num_examples(dataset, r.batch_size)
    steps_per_epoch = math.ceil((n_examples if limit is None else min(limit, n_examples)) / r.batch_size)
    total = steps_per_epoch * r.epochs
    for epoch in range(start, r.epochs):
        torch.manual_seed(r.seed * 100_003 + epoch)  # dropout and other in-model randomness
        gen = torch.Generator().manual_seed(r.seed * 100_003 + epoch)
        model.train()
        t0, loss_sum, correct, n = time.perf_counter(), 0.0, 0, 0
        pbar = bar(batches(dataset, r.batch_size, shuffle=True, generator=gen, device=device, limit=limit),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{r.epochs}", enabled=progress, unit="batch")
        for i, (x, y) in enumerate(pbar):
            if i == 0:
                check_input(model, x)
            for g in opt.param_groups:
                g["lr"] = r.lr_at(epoch * steps_per_epoch + i, total)
            if perturb is not None:
                x = perturb(model, x, y)
                model.train()
            out = model(x)
            loss = loss_fn(out, y)
            if not torch.isfinite(loss):
                raise ModefuseError(f"training diverged at epoch {epoch + 1}, batch {i + 1} (loss {loss.item()}); "
                                    f"lower the learning rate (now {r.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
            if i % 20 == 0:
                pbar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct / n:.3f}")
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n, 1), "train_accuracy": correct / max(n, 1),
               "seconds": time.perf_counter() - t0, "examples_per_s": n / (time.perf_counter() - t0)}
        if eval_data is not None:
            row.update({f"test_{k}": v for k, v in evaluate(model, eval_data, loss_fn=loss_fn).items()})
        history.append(row)
        if progress:
            write("epoch {epoch}: ".format(**row) + ", ".join(
                f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "examples_per_s")))
        if resume is not None:
            checkpoint.save_state(resume, model, opt, epoch=epoch + 1, history=history, seed=r.seed)
    if resume is not None and Path(resume).is_file():
        Path(resume).unlink()
    return history


def _num_examples(data, batch_size: int) -> int:
    try:
        return len(data)
    except TypeError:
        return sum(len(x) for x, _ in batches(data, batch_size))


@torch.no_grad()
def evaluate(model: nn.Module, data, loss_fn: LossFn | None = None, batch_size: int = 1000,
             params: Mapping[str, torch.Tensor] | None = None, limit: int | None = None) -> dict[str, float]:
    """Mean loss and accuracy of `model` on `data` (at `params` instead of its own weights, if given).

    Runs in eval mode without gradients and restores the model's mode; paths, planes and curves evaluate
    many points of weight space through `params` without copying the model.

    Parameters
    ----------
    model : nn.Module
        The model (its architecture, and its weights unless `params` is given).
    data : Dataset or batches
        Labelled (inputs, targets) pairs.
    loss_fn : callable, optional
        loss_fn(outputs, targets), mean over the batch; default cross-entropy.
    batch_size : int
        Examples per forward pass.
    params : mapping of str to Tensor, optional
        Parameters to run the model at (`torch.func.functional_call`).
    limit : int, optional
        Evaluate on the first `limit` examples only.

    Returns
    -------
    dict
        {"loss": mean loss, "accuracy": fraction of correct top-1 predictions}, both per target (per example
        for a classifier, per position for a language model).
    """
    batch_size = positive_int(batch_size, "batch_size")
    limit = optional_positive_int(limit, "limit")
    loss_fn = loss_fn or F.cross_entropy
    was_training = model.training
    model.eval()
    device = _device_of(model)
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for x, y in batches(data, batch_size, device=device, limit=limit):
            if y is None:
                raise ModefuseError("evaluate needs labelled data: (inputs, targets) batches")
            if n == 0:
                check_input(model, x)
            out = model(x) if params is None else functional_call(model, params, (x,))
            # per target: one per example for a classifier, one per position for a sequence (a language model)
            loss_sum += loss_fn(out, y).item() * y.numel()
            correct += (out.argmax(1) == y).sum().item()
            n += y.numel()
    finally:
        model.train(was_training)
    if n == 0:
        raise ModefuseError("evaluate got no data (an empty dataset?)")
    return {"loss": loss_sum / n, "accuracy": correct / n}
