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
width the clustering is ZipIt's greedy pairing. Ties (units constant on the data, which correlate with
nothing) are broken by TIE_BREAK times the correlation at the group's other nodes (pre-activations) plus
TIE_BREAK where two constant units hold the same value, so that twins stay together.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ModefuseError
from ..match.blockmatch import inner_groups
from ..match.probe import TIE_BREAK, CrossMoments, read_points, tapped_samples, taps, unit_correlations
from ..spec.transport import apply_along
from .couplings import mix_tensors
from ..spec.infer import infer_spec
from .methods import Fusion, FusionProblem, build_fused, problem_specs, register_fuser, target_sizes

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
    sizes = target_sizes(spec, p.widths)
    unit_nodes, trace = taps(spec, p.models[0], x, p.data)
    points = {pt for nodes in unit_nodes.values() for pt in nodes}
    stats = {pt: CrossMoments() for pt in points}
    for per_model in tapped_samples(list(p.models), trace, points, p.data, p.limit or LIMIT):
        for pt in points:
            side_by_side = torch.cat([s[pt] for s in per_model], 1)
            stats[pt].update(side_by_side, side_by_side)
    corr = unit_correlations(stats, trace, unit_nodes, own_nodes=True)
    for g, nodes in unit_nodes.items():
        if nodes:  # units constant on the data match their twins: the same constant (ReLU-dead: 0)
            corr[g] = corr[g] + TIE_BREAK * sum(_same_constant(stats[pt]) for pt in read_points(trace, nodes))
    k = len(p.models)
    merges: dict[str, list[torch.Tensor]] = {}
    unmerges: dict[str, list[torch.Tensor]] = {}
    for g, n in spec.sizes.items():
        if g not in corr:
            raise ModefuseError(f"zipit reads each group's activations, and group {g!r} has none in the model's "
                                f"graph; use method='regmean' or 'wasserstein'")
        clusters = average_linkage(corr[g].cpu().numpy(), sizes[g], math.ceil(k * n / sizes[g]))
        merges[g], unmerges[g] = _merge_matrices(clusters, [n] * k, p.lam)
    fused = {key: _fused_tensor(key, spec, [s[key] for s in p.states], p.lam, merges, unmerges)
             for key in p.states[0]}
    model = build_fused(p.models[0], fused, spec, sizes)
    target_spec = spec if sizes == spec.sizes else infer_spec(model, x)
    # what repair reads: sum_i lambda_i n pi_i @ stats_i is each cluster's average of its units' statistics
    device = next(model.parameters()).device
    couplings = {g: [(m / (lam * sizes[g]) if lam > 0 else torch.zeros_like(m)).float().to(device)
                     for m, lam in zip(ms, p.lam)] for g, ms in merges.items()}
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


def _same_constant(stats: CrossMoments) -> torch.Tensor:
    """1 where both units are constant on the data and equal (to 1e-6 relative), else 0."""
    mean, const = stats.constant()
    scale = torch.maximum(mean.abs()[:, None], mean.abs()[None, :]).clamp_min(1e-12)
    same = (mean[:, None] - mean[None, :]).abs() <= 1e-6 * scale
    return (same & const[:, None] & const[None, :]).double()


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
    """Model i's tensor with M_i on the axes holding units and U_i^T on those reading them, summed over the
    models; lambda-weighted where no axis holds units. A tensor holding units on several axes (elementwise
    in two groups: a state-space layer's A) is divided by the models' share of each entry; an entry no model
    holds both units of takes the models' averages over their units."""
    axes = spec.axes_of.get(key)
    if not axes or not tensors[0].is_floating_point():
        return mix_tensors(tensors, lam)
    ndim = tensors[0].dim()
    holding = [(a, g) for a, g in axes if not spec.is_input(key, a, ndim)]

    def mapped(t, i, hold, read=lambda g, i: unmerges[g][i].T):
        for a, g in axes:
            mat = hold(g, i) if (a, g) in holding else read(g, i)
            t = apply_along(t, a, mat.to(t.device), spec.layout(g, key, a), key)
        return t

    merge = lambda g, i: merges[g][i]  # noqa: E731
    out = sum(mapped(t.double(), i, merge) * (1.0 if holding else w) for i, (t, w) in enumerate(zip(tensors, lam)))
    if len(holding) > 1:
        neutral = lambda g, i: torch.full_like(unmerges[g][i].T, 1.0 / len(unmerges[g][i]))  # noqa: E731
        share = sum(mapped(torch.ones_like(t, dtype=torch.float64), i, merge, neutral) for i, t in enumerate(tensors))
        spread = lambda g, i: _rows_summing_to_one(merges[g][i])  # noqa: E731
        fallback = sum(w * mapped(t.double(), i, spread) for i, (t, w) in enumerate(zip(tensors, lam)))
        out = torch.where(share > 1e-12, out / share.clamp_min(1e-12), fallback)
    return out.to(tensors[0].dtype)


def _rows_summing_to_one(m: torch.Tensor) -> torch.Tensor:
    """Each fused unit's weights over one model's units, summing to 1 (uniform where it has none there)."""
    total = m.sum(1, keepdim=True)
    return torch.where(total > 0, m / total.clamp_min(1e-300), torch.full_like(m, 1.0 / m.shape[1]))
