"""Solvers behind one call each: linear assignment now; exact/entropic OT and Gromov-Wasserstein (POT) for fusion.

Callers pass torch tensors on any device and get torch tensors back on it.
"""
from __future__ import annotations

import math

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

try:  # lapx: Jonker-Volgenant in native code, 3x scipy's solver on weight matching's scores, same optima
    from lap import lapjvr as _lapjv
except ImportError:  # an install without it (or with the older `lap`, which has no lapjvr) uses scipy
    _lapjv = None


def assignment(score: torch.Tensor, maximize: bool = True, solver: str = "auto") -> torch.Tensor:
    """The permutation `perm` maximizing (or minimizing) sum_i score[i, perm[i]], exactly.

    `solver`: "lapx" (Jonker-Volgenant, `lapx.lapjvr`), "scipy" (`linear_sum_assignment`), or "auto": lapx
    where it is installed. Both are exact: they differ only where several assignments tie.
    """
    if solver not in ("auto", "lapx", "scipy"):
        raise ValueError(f"unknown assignment solver {solver!r}: use 'auto', 'lapx' or 'scipy'")
    if solver == "lapx" and _lapjv is None:
        raise ImportError("the 'lapx' assignment solver needs the lapx package: pip install lapx")
    if score.numel() == 0:
        return torch.arange(score.shape[0], device=score.device)[:0]
    cost = score.detach().to("cpu", torch.float64, copy=True).numpy()  # the one copy: worked on in place
    if not math.isfinite(cost.sum()):  # a NaN or infinity anywhere makes the sum one (no n x n mask)
        raise ValueError("the assignment cost has NaN or infinite entries (NaN weights or activations?)")
    # Subtracting a constant per row leaves the optimal assignment unchanged and gives the solver a zero
    # in every row to start from (lapjvr: 1.2-1.6x faster on weight matching's scores).
    if maximize:
        np.subtract(cost.max(axis=1, keepdims=True), cost, out=cost)
    else:
        cost -= cost.min(axis=1, keepdims=True)
    if _lapjv is not None and solver != "scipy" and cost.shape[0] == cost.shape[1]:
        _, rows, cols = _lapjv(cost)
    else:  # scipy's augmenting-path solver also gains from a zero in every column
        cost -= cost.min(axis=0, keepdims=True)
        rows, cols = linear_sum_assignment(cost)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.from_numpy(np.asarray(rows, dtype=np.int64))] = torch.from_numpy(np.asarray(cols, dtype=np.int64))
    return perm.to(score.device)


def uniform(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)


def ot_plan(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
            eps: float | None = None) -> torch.Tensor:
    """Optimal transport plan between marginals a, b (uniform by default) for `cost`, mass 1.

    eps None: exact OT (POT's network simplex, on the CPU); eps > 0: entropic OT (POT's Sinkhorn, on the
    tensors' device: numpy arrays on the CPU, torch on a GPU) with eps relative to the largest cost.
    """
    cost = cost.detach().double()
    if not torch.isfinite(cost).all():
        raise ValueError("the transport cost has NaN or infinite entries (NaN weights?)")
    a = uniform(cost.shape[0], cost) if a is None else a.to(cost)
    b = uniform(cost.shape[1], cost) if b is None else b.to(cost)
    n, m = cost.shape
    if eps is None:
        if n == m and torch.allclose(a, uniform(n, a)) and torch.allclose(b, a):
            # a square problem with uniform marginals has a permutation among its optima (Birkhoff):
            # scipy's assignment solver finds one faster than the network simplex
            perm = assignment(cost, maximize=False)
            plan = torch.zeros_like(cost)
            plan[torch.arange(n, device=cost.device), perm] = 1.0 / n
        else:
            plan = ot.emd(a.cpu(), b.cpu(), cost.cpu(), numItermax=10_000_000).to(cost.device)
    else:
        scale = cost.abs().max().clamp_min(1e-12)
        # the plain iteration is faster and exact enough while exp(-cost / eps) stays in float64 range
        method = "sinkhorn_log" if eps < 2e-3 else "sinkhorn"
        if cost.device.type == "cpu":  # POT's numpy backend: a tenth of the torch backend's time per iteration
            plan = torch.from_numpy(ot.sinkhorn(a.numpy(), b.numpy(), (cost / scale).numpy(), eps, method=method,
                                                numItermax=5000, stopThr=1e-7, warn=False))
        else:
            plan = ot.sinkhorn(a, b, cost / scale, eps, method=method, numItermax=5000, stopThr=1e-7, warn=False)
    return plan.float()
