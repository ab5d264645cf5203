"""ZipIt! (Stoica et al. 2024, "ZipIt! Merging Models from Different Tasks without Training"): the units of
all K models, side by side, clustered by the correlation of their activations, merges inside one model
allowed; each fused unit averages its cluster.

Why: models trained on different tasks or label sets (federated clients, a label split) share few
features. Matching each unit of one model to one of the other (permutation alignment, OT couplings) forces
a merge of unlike features; ZipIt lets a model's features merge with its own redundant ones instead and
keeps the features only one model has.

Per group, with C the Pearson correlation of the N = sum_i n_i units on the data (read where the next
layers read them), average-linkage clustering into the target's n units, each cluster at most
ceil(N / n) units (K for models of one width; merges stop being capped only if no capped pair is left).
For cluster f and unit j of model i: M_i[f, j] = lambda_i / (sum of lambda over f's units) (merge),
U_i[j, f] = 1 (unmerge). Tensors holding units get M_i on that axis, tensors reading them U_i^T; the
fused tensor is sum_i of those (lambda_i-weighted where no axis holds units). For K = 2 models of one
width the clustering is ZipIt's greedy pairing.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ModefuseError
from ..match.blockmatch import inner_groups
from ..match.probe import CrossMoments, tapped_samples, taps, unit_correlations
from ..spec.transport import apply_along
from .couplings import mix_tensors
from ..spec.infer import infer_spec
from .methods import Fusion, FusionProblem, _build, _target_sizes, problem_specs, register_fuser

LIMIT = 2000  # examples read for the correlations unless fuse(limit=) says otherwise


@register_fuser("zipit", needs_data=True)
def zipit(p: FusionProblem) -> Fusion:
    """ZipIt! (Stoica et al. 2024): all models' units clustered by activation correlation, merges inside a model allowed."""
    x, specs = problem_specs(p, need_example=True)
    spec = specs[0]
    if any(sp.sizes != spec.sizes for sp in specs[1:]):
        raise ModefuseError("zipit fuses models of one width (into any width); for models of different widths "
                            "use method='wasserstein'")
    if any(inner_groups(spec, g) for g in spec.groups):
        raise ModefuseError("zipit does not merge attention heads; use method='regmean' or 'wasserstein' for "
                            "models with attention")
    sizes = _target_sizes(spec, p.widths)
    unit_nodes, trace = taps(spec, p.models[0], x, p.data)
    points = {pt for nodes in unit_nodes.values() for pt in nodes}
    stats = {pt: CrossMoments() for pt in points}
    for per_model in tapped_samples(list(p.models), trace, points, p.data, p.limit or LIMIT):
        for pt in points:
            side_by_side = torch.cat([s[pt] for s in per_model], 1)
            stats[pt].update(side_by_side, side_by_side)
    corr = unit_correlations(stats, trace, unit_nodes)
    k = len(p.models)
    merges: dict[str, list[torch.Tensor]] = {}
    unmerges: dict[str, list[torch.Tensor]] = {}
    for g, n in spec.sizes.items():
        clusters = average_linkage(corr[g].cpu().numpy(), sizes[g], math.ceil(k * n / sizes[g]))
        merges[g], unmerges[g] = _merge_matrices(clusters, [n] * k, p.lam)
    fused = {key: _fused_tensor(key, spec, [s[key] for s in p.states], p.lam, merges, unmerges)
             for key in p.states[0]}
    model = _build(p.models[0], fused, spec, sizes)
    target_spec = spec if sizes == spec.sizes else infer_spec(model, x)
    # what repair reads: sum_i lambda_i n pi_i @ stats_i is each cluster's average of its units' statistics
    couplings = {g: [m / (lam * sizes[g]) if lam > 0 else torch.zeros_like(m) for m, lam in zip(ms, p.lam)]
                 for g, ms in merges.items()}
    return Fusion(model, couplings, target_spec, "zipit")


def average_linkage(corr: np.ndarray, n: int, cap: int) -> list[list[int]]:
    """`n` clusters of the units of `corr` (similarity), merging the most similar pair of clusters (mean
    similarity between their units) of at most `cap` units together; ordered by their smallest unit."""
    total = len(corr)
    if n >= total:
        return [[j] for j in range(total)]
    sim = corr.astype(np.float64, copy=True)
    np.fill_diagonal(sim, -np.inf)
    size = np.ones(total, dtype=np.int64)
    alive = np.ones(total, dtype=bool)
    members = [[j] for j in range(total)]

    def masked(rows):
        ok = alive[None, :] & (size[rows][:, None] + size[None, :] <= cap)
        return np.where(ok, sim[rows], -np.inf)

    best_val = np.empty(total)
    best_arg = np.empty(total, dtype=np.int64)

    def refresh(rows):
        m = masked(rows)
        best_arg[rows] = m.argmax(1)
        best_val[rows] = m[np.arange(len(rows)), best_arg[rows]]

    refresh(np.arange(total))
    for _ in range(total - n):
        i = int(np.argmax(np.where(alive, best_val, -np.inf)))
        if not np.isfinite(best_val[i]):  # no pair within the cap is left: merge without it
            cap = total
            refresh(np.flatnonzero(alive))
            i = int(np.argmax(np.where(alive, best_val, -np.inf)))
        j = int(best_arg[i])
        row = (size[i] * sim[i] + size[j] * sim[j]) / (size[i] + size[j])
        sim[i], sim[:, i] = row, row
        sim[j], sim[:, j] = -np.inf, -np.inf
        sim[i, i] = -np.inf
        size[i] += size[j]
        alive[j] = False
        members[i] += members[j]
        stale = np.flatnonzero(alive & ((best_arg == i) | (best_arg == j)))
        better = alive & (sim[:, i] > best_val) & (size + size[i] <= cap)
        best_val[better], best_arg[better] = sim[better, i], i
        refresh(np.union1d(stale, [i]))
    return sorted((sorted(members[j]) for j in np.flatnonzero(alive)), key=lambda c: c[0])


def _merge_matrices(clusters: list[list[int]], widths: list[int], lam: list[float]):
    """Per model, M_i (n_target x n_i: each cluster's weights over its units, lambda-weighted, summing to 1
    over the models) and U_i (n_i x n_target: 1 where a unit belongs to a cluster)."""
    offsets = np.cumsum([0, *widths])
    owner = np.repeat(np.arange(len(widths)), widths)
    m = [torch.zeros(len(clusters), w, dtype=torch.float64) for w in widths]
    u = [torch.zeros(w, len(clusters), dtype=torch.float64) for w in widths]
    for f, units in enumerate(clusters):
        total = sum(lam[owner[j]] for j in units)
        for j in units:
            i = owner[j]
            m[i][f, j - offsets[i]] = lam[i] / total if total > 0 else 1.0 / len(units)
            u[i][j - offsets[i], f] = 1.0
    return m, u


def _fused_tensor(key, spec, tensors, lam, merges, unmerges) -> torch.Tensor:
    axes = spec.axes_of.get(key)
    if not axes or not tensors[0].is_floating_point():
        return mix_tensors(tensors, lam)
    holds = any(not spec.is_input(key, a, tensors[0].dim()) for a, _ in axes)
    out = None
    for i, (t, w) in enumerate(zip(tensors, lam)):
        for a, g in axes:
            inp = spec.is_input(key, a, t.dim())
            mat = unmerges[g][i].T if inp else merges[g][i]
            t = apply_along(t.double(), a, mat.to(t.device), spec.layout(g, key, a), key)
        t = t if holds else w * t
        out = t if out is None else out + t
    return out.to(tensors[0].dtype)
