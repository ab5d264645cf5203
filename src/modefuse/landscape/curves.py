"""Mode-connecting curves (Garipov et al. 2018; Tatro et al. 2020): Bezier and polychain curves between
two fixed endpoints through a trainable middle point, optionally after aligning the second endpoint
to the first, adversarially, or by proximal alternating minimization (PAM) over the permutation."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from ..version import __version__
from ..zoo import models as zoo
from ..match.align import align as align_models
from ..match.weight_matching import weight_matching
from .attack import PGD, robust_accuracy
from ..zoo.batching import batches
from ..merge.bn import has_batchnorm, reset_bn
from ..checks import int_at_least, nonneg_float, optional_positive_int, positive_int, probability
from ..errors import CheckpointError, ModefuseError
from .interpolate import Blender, PathMetrics
from ..progress import bar
from ..storage.statedict import check_finite, check_same_architecture
from ..zoo.checkpoint import read_tensors, state_tensors, write_tensors
from ..zoo.recipe import Recipe, recipe_of
from ..zoo.training import train
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
    """A curve between endpoints a and b (b possibly permuted toward a) through the middle point `middle`.

    The result of `fit_curve` and `pam`. Its point at t is phi(t) = c_a(t) a + c_m(t) m + c_b(t) b
    (Garipov et al. 2018): for "bezier", phi(t) = (1 - t)^2 a + 2 t (1 - t) m + t^2 b; for "polychain",
    phi(t) = (1 - 2t) a + 2t m for t <= 1/2 and (2 - 2t) m + (2t - 1) b after. A trained curve can keep
    the loss low all along where the straight line from a to b has a barrier.

    Attributes
    ----------
    a, b : nn.Module
        The fixed endpoints (b as aligned, when the curve was fitted with alignment or by `pam`).
    middle : nn.Module
        The trained middle point m, of the endpoints' architecture.
    kind : {"bezier", "polychain"}
        The curve's shape.
    history : list of dict
        Per epoch of the middle point's training: `mf.train`'s metrics (epochs numbered across calls).
    pam_history : list of dict
        Per PAM round: the round, the matching objective (None in round 1), the units moved and the
        training loss.
    """

    a: nn.Module
    b: nn.Module
    middle: nn.Module
    kind: str = "bezier"
    history: list[dict] = field(default_factory=list)  # per epoch: training loss
    pam_history: list[dict] = field(default_factory=list)  # per PAM round: objective, units moved

    def point(self, t: float, bn_data=None) -> nn.Module:
        """The model at t in [0, 1] (a copy; BatchNorm statistics recomputed on `bn_data` if given).

        Parameters
        ----------
        t : float
            Position on the curve: 0 gives a copy of a, 1 a copy of b.
        bn_data : batches, Dataset or tensor, optional
            Inputs to recompute BatchNorm statistics on (else the mixed statistics are kept).

        Returns
        -------
        nn.Module
            A new model holding phi(t).
        """
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
        default `data`); with `attack`, robust accuracy too.

        Parameters
        ----------
        data : batches, Dataset or tensor
            Labelled (inputs, targets) examples.
        n : int
            Number of positions, 0 and 1 included (at least 2).
        bn_data : batches, Dataset or tensor, optional
            Inputs for the BatchNorm statistics (default: `data`).
        attack : PGD, optional
            Adds robust accuracy at each t.
        limit : int, optional
            At most that many examples of `data`.
        progress : bool
            A progress bar over the positions.

        Returns
        -------
        PathMetrics
            Loss, accuracy (and robust accuracy) at each t, and the barriers read off them.
        """
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
        """Endpoints and middle point in one .safetensors file (atomic, through `checkpoint`).

        `mf.load_curve(path)` reads it back (for zoo architectures, which the file names).

        Parameters
        ----------
        path : str or PathLike
            The file to write; refused if any tensor is not finite.
        **metadata
            JSON metadata stored beside the curve's kind, architecture and histories.

        Returns
        -------
        Path
            `path`.
        """
        tensors = {k: v for p, m in (("a", self.a), ("b", self.b), ("middle", self.middle))
                   for k, v in state_tensors(m, f"{p}.").items()}
        check_finite(tensors, f"refusing to save {path}")
        meta = {"format": "modefuse-curve", "modefuse_version": __version__, "kind": self.kind,
                "arch": getattr(self.a, "arch", None), "history": self.history, "pam_history": self.pam_history,
                **metadata}
        write_tensors(path, tensors, meta)
        return Path(path)


def load_curve(path: str | os.PathLike) -> Curve:
    """Read a curve written by `Curve.save`."""
    tensors, meta = read_tensors(path)
    meta = meta or {}
    if meta.get("format") != "modefuse-curve" or not meta.get("arch"):
        raise CheckpointError(f"{path} is not a modefuse curve (write one with `modefuse curve ... --out`)")
    parts = []
    for prefix in ("a", "b", "middle"):
        m = zoo.build(meta["arch"]["name"], **meta["arch"]["kwargs"])
        m.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        parts.append(m)
    return Curve(*parts, kind=meta["kind"], history=meta.get("history", []), pam_history=meta.get("pam_history", []))


def fit_curve(a: nn.Module, b: nn.Module, data, kind: str = "bezier", align: str | None = None,
              adversarial: PGD | None = None, recipe: Recipe | None = None, *, progress: bool = True,
              limit: int | None = None, middle: nn.Module | None = None, **fields) -> Curve:
    """Train the middle point of a `kind` curve from a to b on `data`, t drawn uniformly per batch.

    Parameters
    ----------
    a, b : nn.Module
        The endpoints (same architecture), kept fixed.
    data : Dataset
        Training data for the middle point.
    kind : {"bezier", "polychain"}
        Quadratic Bezier curve, or two segments through the middle point (Garipov et al. 2018).
    align : {None, "activation", "weight"}
        First permute b toward a (the aligned curves of Tatro et al. 2020).
    adversarial : PGD, optional
        Train on adversarial examples of the point at t (robust curves).
    recipe : Recipe, optional
        How the middle point is trained (default `Recipe()`); `epochs=`, `lr=` and the recipe's other
        fields given by name replace the recipe's.
    middle : nn.Module, optional
        Start from this middle point instead of the midpoint of the line.
    progress : bool
        Progress of the training, as `mf.train` shows it.
    limit : int, optional
        At most that many examples per epoch.

    Returns
    -------
    Curve
        The endpoints, the trained middle point and its training history.
    """
    coefficients(kind, 0.5)  # validates kind
    r = recipe_of(recipe, **fields)
    optional_positive_int(limit, "limit")
    check_same_architecture(a.state_dict(), b.state_dict(), "endpoint a", "endpoint b")
    if align is not None:
        b = align_models(a, b, method=align, data=data, seed=r.seed).model
    if middle is None:
        middle = copy.deepcopy(Blender(a, b).set([0.5, 0.5]))
    curve = Curve(copy.deepcopy(a), copy.deepcopy(b), copy.deepcopy(middle), kind)
    _train_middle(curve, data, r, adversarial, progress, limit)
    return curve


class CurveModule(nn.Module):
    """A curve between fixed endpoints as a module, so that `mf.train` trains it: its parameters are the
    middle point's, and each training forward runs the model at a point t drawn uniformly in [0, 1], one t
    per batch (Garipov et al. 2018): the loss is E_t L(phi(t)), phi(t) = c_a(t) a + c_m(t) m + c_b(t) b."""

    def __init__(self, curve: "Curve", seed: int = 0):
        super().__init__()
        self.kind, self.middle = curve.kind, curve.middle  # trained in place
        self._template = [copy.deepcopy(curve.middle)]  # the architecture, run functionally (not a submodule)
        self._ends = [{k: p.detach() for k, p in m.named_parameters()} for m in (curve.a, curve.b)]
        self._gen = torch.Generator().manual_seed(seed)
        self.held: float | None = None  # a t drawn ahead (for an attack on this batch's point)

    def draw(self) -> float:
        """Draw this batch's t; the next forward uses it."""
        self.held = torch.rand((), generator=self._gen).item()
        return self.held

    def params_at(self, t: float) -> dict[str, torch.Tensor]:
        ca, cm, cb = coefficients(self.kind, t)
        (pa, pb), mid = self._ends, dict(self.middle.named_parameters())
        return {k: ca * pa[k] + cm * mid[k] + cb * pb[k] for k in mid}

    def point(self, t: float) -> nn.Module:
        """The working model with its weights set to the point at t (no gradient)."""
        work, params = self._template[0], self.params_at(t)
        with torch.no_grad():
            for k, p in work.named_parameters():
                p.copy_(params[k])
        return work

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.held if self.held is not None else self.draw()
        self.held = None
        work = self._template[0]
        work.train(self.training)
        return functional_call(work, self.params_at(t), (x,))


def _train_middle(curve: "Curve", data, recipe: Recipe, adversarial: PGD | None, progress: bool,
                  limit: int | None) -> None:
    """Train the curve's middle point with `mf.train` (its loop, schedule, divergence check and progress)."""
    module = CurveModule(curve, recipe.seed)

    def at_this_batch_point(m: CurveModule, x, y):  # adversarial examples of the point the batch trains
        x = adversarial(m.point(m.draw()), x, y)
        m.train()
        return x

    history = train(module, data, recipe, progress=progress, limit=limit,
                    perturb=at_this_batch_point if adversarial is not None else None)
    start = len(curve.history)
    curve.history.extend({**row, "epoch": start + row["epoch"]} for row in history)
    if has_batchnorm(curve.middle):  # a sensible middle point for its own statistics
        with torch.no_grad():
            curve.middle.load_state_dict({**curve.middle.state_dict(),
                                          **{k: v for k, v in Blender(curve.a, curve.b).set([0.5, 0.5])
                                             .state_dict().items() if "running" in k}})


def pam(a: nn.Module, b: nn.Module, data, rounds: int = 3, epochs_per_round: int | None = None,
        kind: str = "bezier", align: str = "activation", proximal: float = 1.0, recipe: Recipe | None = None, *,
        progress: bool = True, limit: int | None = None, **fields) -> Curve:
    """Proximal alternating minimization (Tatro et al. 2020) between the middle point and the permutation.

    Starts from the aligned permutation; each round after the first re-solves the permutation of b
    with the middle point fixed, then every round trains the middle point with the permutation fixed.
    The permutation step is weight matching of b to the point
    the curve heads for (2 c - a, where a Bezier through a and c ends when b is in place), plus a
    proximal term (weight `proximal`) toward the current permuted b. `.pam_history` reports per round
    the matching objective and how many units moved.

    Parameters
    ----------
    a, b : nn.Module
        The endpoints (same architecture), kept fixed; b is permuted.
    data : Dataset
        Training data for the middle point (and for activation alignment).
    rounds : int
        Alternations of the two steps.
    epochs_per_round : int, optional
        Epochs of the middle point's training per round (replaces the recipe's epochs).
    recipe : Recipe, optional
        How the middle point is trained in each round (default: `Recipe(epochs=1)`); round r trains with
        seed `recipe.seed + r`. The recipe's fields given by name replace its own.
    kind : {"bezier", "polychain"}
        The curve's shape, as in `fit_curve`.
    align : str
        The `mf.align` method that gives the starting permutation ("activation", "weight", ...).
    proximal : float
        Weight of the proximal term toward the current permuted b (>= 0).
    progress, limit
        As in `fit_curve`.

    Returns
    -------
    Curve
        The endpoints (b under the last permutation), the trained middle point, its training history
        and `pam_history`.
    """
    coefficients(kind, 0.5)  # validates kind
    rounds = positive_int(rounds, "rounds")
    proximal = nonneg_float(proximal, "proximal")
    optional_positive_int(limit, "limit")
    r = recipe_of(recipe or Recipe(epochs=1), epochs=epochs_per_round, **fields)
    positive_int(r.epochs, "epochs_per_round")
    seed = r.seed
    res = align_models(a, b, method=align, data=data, seed=seed)
    spec, perms = res.spec, res.perms
    sb = b.state_dict()
    curve = Curve(copy.deepcopy(a), res.model, copy.deepcopy(Blender(a, res.model).set([0.5, 0.5])), kind)
    for rnd in range(rounds):
        if rnd > 0:  # the permutation step, with the middle point fixed
            sa, sc, sbp = curve.a.state_dict(), curve.middle.state_dict(), curve.b.state_dict()
            target = {k: (2 * sc[k].float() - sa[k].float() + proximal * sbp[k].float()) if sc[k].is_floating_point()
                      else sc[k] for k in sc}
            new, hist = weight_matching(spec, target, sb, seed=seed + rnd, init=perms)
            moved = sum(int((new[g] != perms[g]).sum()) for g in perms)
            perms = new
            curve.b.load_state_dict(permute(sb, spec, perms))
        else:
            hist, moved = [], 0
        _train_middle(curve, data, r.replace(seed=seed + rnd), None, progress, limit)
        curve.pam_history.append({"round": rnd + 1, "objective": hist[-1] if hist else None, "units_moved": moved,
                                  "train_loss": curve.history[-1]["train_loss"]})
    return curve
