"""Mode-connecting curves (Garipov et al. 2018; Tatro et al. 2020): Bezier and polychain curves between
two fixed endpoints through a trainable middle point, optionally after aligning the second endpoint
to the first, adversarially, or by proximal alternating minimization (PAM) over the permutation."""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call

from ..version import __version__
from ..zoo import models as zoo
from ..match.align import align as align_models
from ..match.weight_matching import weight_matching
from ..storage.atomic import atomic_path
from .attack import PGD, robust_accuracy
from ..zoo.batching import batches
from ..merge.bn import has_batchnorm, reset_bn
from ..checks import int_at_least, nonneg_float, nonneg_int, one_of, optional_positive_int, positive_float, \
    positive_int, probability
from ..errors import CheckpointError, ModefuseError
from .interpolate import Blender, PathMetrics
from ..progress import bar, write
from ..storage.statedict import check_same_architecture
from ..zoo.training import lr_at, make_optimizer
from ..spec.transport import permute

KINDS = ("bezier", "polychain")


def coefficients(kind: str, t: float) -> tuple[float, float, float]:
    """Weights of (a, c, b) in the curve's point at t."""
    if kind == "bezier":
        return (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    if kind == "polychain":
        return (1 - 2 * t, 2 * t, 0.0) if t <= 0.5 else (0.0, 2 - 2 * t, 2 * t - 1)
    raise ModefuseError(f"unknown curve kind {kind!r}; use 'bezier' or 'polychain'")


@dataclass
class Curve:
    """Endpoints a and b (b possibly permuted toward a) and the middle point `middle` (a module)."""

    a: nn.Module
    b: nn.Module
    middle: nn.Module
    kind: str = "bezier"
    history: list[dict] = field(default_factory=list)  # per epoch: training loss
    pam_history: list[dict] = field(default_factory=list)  # per PAM round: objective, units moved

    def point(self, t: float, bn_data=None) -> nn.Module:
        """The model at t in [0, 1] (a copy; BatchNorm statistics recomputed on `bn_data` if given)."""
        t = probability(t, "t")
        if t == 0 or t == 1:
            m = copy.deepcopy(self.a if t == 0 else self.b)
        else:
            m = copy.deepcopy(Blender(self.a, self.middle, self.b).set(coefficients(self.kind, t)))
        if bn_data is not None and has_batchnorm(m):
            reset_bn(m, bn_data)
        return m

    def evaluate(self, data, n: int = 65, bn_data=None, attack: PGD | None = None, limit: int | None = None,
                 progress: bool = False) -> PathMetrics:
        """Loss and accuracy at n evenly spaced t (BatchNorm statistics recomputed at each t on `bn_data`,
        default `data`); with `attack`, robust accuracy too."""
        n = int_at_least(n, 2, "n")
        limit = optional_positive_int(limit, "limit")
        blend = Blender(self.a, self.middle, self.b)
        cached = list(batches(data, 1000, limit=limit))
        ts = torch.linspace(0, 1, n).tolist()
        res = PathMetrics(ts, [], [], [] if attack else None)
        for t in bar(ts, desc="evaluating curve", enabled=progress, unit="point"):
            r = blend.evaluate(coefficients(self.kind, t), cached, bn_data)
            res.loss.append(r["loss"])
            res.accuracy.append(r["accuracy"])
            if attack:
                res.robust_accuracy.append(robust_accuracy(blend.module, cached, attack, limit=limit))
        return res

    def save(self, path: str | os.PathLike, **metadata) -> Path:
        """Endpoints and middle point in one .safetensors file (atomic)."""
        tensors = {f"{p}.{k}": v.detach().cpu().contiguous().clone()
                   for p, m in (("a", self.a), ("b", self.b), ("middle", self.middle))
                   for k, v in m.state_dict().items()}
        meta = {"format": "modefuse-curve", "modefuse_version": __version__, "kind": self.kind,
                "arch": getattr(self.a, "arch", None), "history": self.history, "pam_history": self.pam_history,
                **metadata}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"modefuse": json.dumps(meta, default=str)})
        return Path(path)


def load_curve(path: str | os.PathLike) -> Curve:
    """Read a curve written by `Curve.save`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("modefuse", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several kinds on damaged files
        raise CheckpointError(f"{path} is not a readable curve checkpoint: {e}") from None
    if meta.get("format") != "modefuse-curve" or not meta.get("arch"):
        raise CheckpointError(f"{path} is not a modefuse curve (write one with `modefuse curve ... --out`)")
    parts = []
    for prefix in ("a", "b", "middle"):
        m = zoo.build(meta["arch"]["name"], **meta["arch"]["kwargs"])
        m.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        parts.append(m)
    return Curve(*parts, kind=meta["kind"], history=meta.get("history", []), pam_history=meta.get("pam_history", []))


def fit_curve(a: nn.Module, b: nn.Module, data, kind: str = "bezier", align: str | None = None,
              adversarial: PGD | None = None, epochs: int = 5, lr: float = 1e-3, optimizer: str = "adam",
              batch_size: int = 128, seed: int = 0, progress: bool = True, limit: int | None = None,
              middle: nn.Module | None = None) -> Curve:
    """Train the middle point of a `kind` curve from a to b on `data`, t drawn uniformly per batch.

    align: None, "activation" or "weight": first permute b toward a (the aligned curves).
    adversarial: a PGD attack: train on adversarial examples of the point at t (robust curves).
    middle: start from this middle point instead of the midpoint of the line.
    """
    coefficients(kind, 0.5)  # validates kind
    _check_training(epochs, lr, optimizer, batch_size, limit)
    check_same_architecture(a.state_dict(), b.state_dict(), "endpoint a", "endpoint b")
    if align is not None:
        b = align_models(a, b, method=align, data=data, seed=seed).model
    if middle is None:
        middle = copy.deepcopy(Blender(a, b).set([0.5, 0.5]))
    curve = Curve(copy.deepcopy(a), copy.deepcopy(b), copy.deepcopy(middle), kind)
    _train_middle(curve, data, epochs, lr, optimizer, batch_size, seed, adversarial, progress, limit)
    return curve


def _check_training(epochs, lr, optimizer, batch_size, limit) -> None:
    nonneg_int(epochs, "epochs")
    positive_float(lr, "lr")
    positive_int(batch_size, "batch_size")
    optional_positive_int(limit, "limit")
    one_of(optimizer, ("adam", "sgd"), "optimizer")


def _train_middle(curve: Curve, data, epochs, lr, optimizer, batch_size, seed, adversarial, progress, limit):
    work = copy.deepcopy(curve.middle)
    names = [n for n, _ in work.named_parameters()]
    pa = dict(curve.a.named_parameters())
    pb = dict(curve.b.named_parameters())
    mid = {n: p.detach().clone().requires_grad_(True) for n, p in curve.middle.named_parameters()}
    opt = make_optimizer(optimizer, list(mid.values()), lr)
    gen = torch.Generator().manual_seed(seed)
    device = next(work.parameters()).device
    n_total = len(data) if limit is None else min(limit, len(data))
    steps = math.ceil(n_total / batch_size) * epochs
    step = 0
    for epoch in range(epochs):
        work.train()
        loss_sum, n = 0.0, 0
        order_gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        pbar = bar(batches(data, batch_size, shuffle=True, generator=order_gen, device=device, limit=limit),
                   total=math.ceil(n_total / batch_size), desc=f"curve epoch {epoch + 1}/{epochs}",
                   enabled=progress, unit="batch")
        for x, y in pbar:
            t = torch.rand((), generator=gen).item()
            ca, cm, cb = coefficients(curve.kind, t)
            params = {k: ca * pa[k].detach() + cm * mid[k] + cb * pb[k].detach() for k in names}
            if adversarial is not None:
                with torch.no_grad():
                    for k, p in work.named_parameters():
                        p.copy_(params[k])
                x = adversarial(work, x, y)
                work.train()
            for g in opt.param_groups:
                g["lr"] = lr_at("cosine", lr, step, steps)
            loss = F.cross_entropy(functional_call(work, params, (x,)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(y)
            n += len(y)
        curve.history.append({"epoch": len(curve.history) + 1, "train_loss": loss_sum / max(n, 1)})
        if progress:
            write(f"curve epoch {curve.history[-1]['epoch']}: train_loss {curve.history[-1]['train_loss']:.4f}")
    with torch.no_grad():
        for k, p in curve.middle.named_parameters():
            p.copy_(mid[k])
        if has_batchnorm(curve.middle):  # a sensible middle point for its own statistics
            curve.middle.load_state_dict({**curve.middle.state_dict(),
                                          **{k: v for k, v in Blender(curve.a, curve.b).set([0.5, 0.5])
                                             .state_dict().items() if "running" in k}})


def pam(a: nn.Module, b: nn.Module, data, rounds: int = 3, epochs_per_round: int = 1, kind: str = "bezier",
        align: str = "activation", proximal: float = 1.0, seed: int = 0, progress: bool = True,
        limit: int | None = None, **train_kwargs) -> Curve:
    """Proximal alternating minimization (Tatro et al. 2020) between the middle point and the permutation.

    Starts from the aligned permutation; each round after the first re-solves the permutation of b
    with the middle point fixed, then every round trains the middle point with the permutation fixed.
    The permutation step is weight matching of b to the point
    the curve heads for (2 c - a, where a Bezier through a and c ends when b is in place), plus a
    proximal term (weight `proximal`) toward the current permuted b. `.pam_history` reports per round
    the matching objective and how many units moved.
    """
    coefficients(kind, 0.5)  # validates kind
    rounds = positive_int(rounds, "rounds")
    epochs_per_round = positive_int(epochs_per_round, "epochs_per_round")
    proximal = nonneg_float(proximal, "proximal")
    _check_training(0, train_kwargs.get("lr", 1e-3), train_kwargs.get("optimizer", "adam"),
                    train_kwargs.get("batch_size", 128), limit)
    res = align_models(a, b, method=align, data=data, seed=seed)
    spec, perms = res.spec, res.perms
    sb = b.state_dict()
    curve = Curve(copy.deepcopy(a), res.model, copy.deepcopy(Blender(a, res.model).set([0.5, 0.5])), kind)
    for r in range(rounds):
        if r > 0:  # the permutation step, with the middle point fixed
            sa, sc, sbp = curve.a.state_dict(), curve.middle.state_dict(), curve.b.state_dict()
            target = {k: (2 * sc[k].float() - sa[k].float() + proximal * sbp[k].float()) if sc[k].is_floating_point()
                      else sc[k] for k in sc}
            new, hist = weight_matching(spec, target, sb, seed=seed + r, init=perms)
            moved = sum(int((new[g] != perms[g]).sum()) for g in perms)
            perms = new
            curve.b.load_state_dict(permute(sb, spec, perms))
        else:
            hist, moved = [], 0
        _train_middle(curve, data, epochs_per_round, train_kwargs.get("lr", 1e-3),
                      train_kwargs.get("optimizer", "adam"), train_kwargs.get("batch_size", 128), seed + r, None,
                      progress, limit)
        curve.pam_history.append({"round": r + 1, "objective": hist[-1] if hist else None, "units_moved": moved,
                                  "train_loss": curve.history[-1]["train_loss"]})
    return curve
