"""Linear mode connectivity: loss and accuracy along the straight line between two models."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..zoo.batching import batches
from ..merge.bn import has_batchnorm, reset_bn
from ..checks import int_at_least, optional_positive_int, positive_int
from ..progress import bar
from ..storage.statedict import check_same_architecture
from ..zoo.training import evaluate


@dataclass
class PathMetrics:
    """Loss and accuracy at positions t in [0, 1] along a path between two models, and what is read off them.

    The path is the straight line of `interpolate` ((1 - t) a + t b) or a learned curve
    (`Curve.evaluate`). Its barriers measure how far the path rises above the line between its
    endpoints' values: near 0, the endpoints are (linearly) mode connected.

    Attributes
    ----------
    ts : list of float
        The positions t, from 0 to 1 (also `alphas`).
    loss : list of float
        Mean loss at each t.
    accuracy : list of float
        Accuracy at each t.
    robust_accuracy : list of float or None
        With an attack: accuracy on its adversarial examples at each t; else None.
    mean_accuracy, min_accuracy, max_loss : float
        Read-only, over the positions (with `loss_barrier` and `accuracy_barrier`, below).
    """

    ts: list[float]
    loss: list[float]
    accuracy: list[float]
    robust_accuracy: list[float] | None = None  # with an attack: accuracy on its adversarial examples

    @property
    def alphas(self) -> list[float]:
        """The positions, under the name the linear-interpolation literature gives them."""
        return self.ts

    @property
    def loss_barrier(self) -> float:
        """max over t of L(t) - ((1 - t) L(0) + t L(1))."""
        l0, l1 = self.loss[0], self.loss[-1]
        return max(l - ((1 - t) * l0 + t * l1) for t, l in zip(self.ts, self.loss))

    @property
    def accuracy_barrier(self) -> float:
        """max over t of ((1 - t) A(0) + t A(1)) - A(t)."""
        a0, a1 = self.accuracy[0], self.accuracy[-1]
        return max((1 - t) * a0 + t * a1 - acc for t, acc in zip(self.ts, self.accuracy))

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracy) / len(self.accuracy)

    @property
    def min_accuracy(self) -> float:
        return min(self.accuracy)

    @property
    def max_loss(self) -> float:
        return max(self.loss)

    def to_dict(self) -> dict:
        return {**asdict(self), "loss_barrier": self.loss_barrier, "accuracy_barrier": self.accuracy_barrier,
                "mean_accuracy": self.mean_accuracy, "min_accuracy": self.min_accuracy, "max_loss": self.max_loss}


class Blender:
    """One working copy of a model whose weights are set to any mix of given endpoints, in place."""

    def __init__(self, *endpoints: nn.Module):
        states = [m.state_dict() for m in endpoints]
        for s in states[1:]:
            check_same_architecture(states[0], s, "the first model", "another model")
        self.module = copy.deepcopy(endpoints[0])
        self.targets = self.module.state_dict()  # live tensors of the working copy
        self.keys = [k for k, v in self.targets.items() if v.is_floating_point()]
        self.stacks = {k: torch.stack([s[k].to(self.targets[k].device, torch.float32) for s in states])
                       for k in self.keys}
        self.batchnorm = has_batchnorm(self.module)

    @torch.no_grad()
    def set(self, coefficients) -> nn.Module:
        """Weights = sum_i coefficients[i] * endpoint_i (for all floating tensors, BN statistics included)."""
        c = torch.as_tensor(coefficients, dtype=torch.float32)
        for k in self.keys:
            st = self.stacks[k]
            self.targets[k].copy_(torch.tensordot(c.to(st.device), st, dims=1))
        return self.module

    def evaluate(self, coefficients, data, bn_data=None, loss_fn=None) -> dict[str, float]:
        """Loss and accuracy at that mix on `data`, BatchNorm statistics recomputed on `bn_data` (default `data`)."""
        m = self.set(coefficients)
        if self.batchnorm:
            reset_bn(m, bn_data if bn_data is not None else data)
        return evaluate(m, data, loss_fn=loss_fn)


def interpolate(a: nn.Module, b: nn.Module, data, steps: int = 25, reset_bn_stats: bool = True, bn_data=None,
                loss_fn=None, progress: bool = True, limit: int | None = None, attack=None,
                attack_limit: int = 2000) -> PathMetrics:
    """Evaluate (1 - alpha) a + alpha b at `steps` alphas in [0, 1] on `data`.

    The loss barrier read off the result (`PathMetrics.loss_barrier`; Frankle et al. 2020, Entezari et
    al. 2022) is max_alpha L((1 - alpha) a + alpha b) - ((1 - alpha) L(a) + alpha L(b)): a and b are
    linearly mode connected when it is near 0 (after aligning b to a, for independently trained models).

    Parameters
    ----------
    a, b : nn.Module
        The endpoints (same architecture); neither is changed. Every floating-point tensor of the
        state_dict is interpolated, BatchNorm statistics included.
    data : batches, Dataset or tensor
        Labelled (inputs, targets) examples the loss and accuracy are measured on.
    steps : int
        Number of evenly spaced alphas, 0 and 1 included (at least 2).
    reset_bn_stats : bool
        With BatchNorm, statistics are recomputed at each point on `bn_data`, since averaged statistics
        do not describe the averaged network.
    bn_data : batches, Dataset or tensor, optional
        Inputs for the BatchNorm statistics (default: `data`).
    loss_fn : callable, optional
        loss_fn(outputs, targets); default cross-entropy.
    progress : bool
        A progress bar over the points.
    limit : int, optional
        At most that many examples of `data`.
    attack : PGD, optional
        An `mf.PGD`: robust accuracy at each point too, on the first `attack_limit` examples.
    attack_limit : int
        Examples attacked at each point.

    Returns
    -------
    PathMetrics
        Loss, accuracy (and robust accuracy) at each alpha, and the barriers read off them.
    """
    from .attack import robust_accuracy
    steps = int_at_least(steps, 2, "steps")
    limit = optional_positive_int(limit, "limit")
    attack_limit = positive_int(attack_limit, "attack_limit")
    blend = Blender(a, b)
    blend.batchnorm &= reset_bn_stats
    cached = list(batches(data, 1000, limit=limit))  # materialize once, reuse at every point
    alphas = torch.linspace(0, 1, steps).tolist()
    loss, acc, robust = [], [], []
    for alpha in bar(alphas, desc="interpolating", enabled=progress, unit="point"):
        r = blend.evaluate([1 - alpha, alpha], cached, bn_data, loss_fn)
        loss.append(r["loss"])
        acc.append(r["accuracy"])
        if attack is not None:
            robust.append(robust_accuracy(blend.module, cached, attack, limit=attack_limit))
    return PathMetrics(alphas, loss, acc, robust if attack is not None else None)
