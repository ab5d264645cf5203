"""REPAIR (Jordan et al. 2022): give each hidden unit of a merged model the statistics its endpoints had.

Averaging weights shrinks the variance of hidden units (their inputs are no longer matched), and the
merged model collapses. REPAIR measures every unit's mean and std on data, in the endpoints and in
the merged model, and rescales the merged layer (weights and bias) so that each unit's output has
the endpoints' interpolated mean and std. Layers are repaired in graph order, each measured after the
ones before it were fixed. Models with BatchNorm also get their statistics recomputed.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from .bn import reset_bn
from ..spec.infer import infer_spec
from ..spec.trace import trace_of
from ..match.probe import example_for, unit_moments
from ..spec.permutation_spec import Layout



def repair(model: nn.Module, endpoints: Sequence[nn.Module], data, weights: Sequence[float] | None = None,
           couplings: Mapping[str, Sequence[torch.Tensor]] | None = None, limit: int = 5000,
           eps: float = 1e-5) -> nn.Module:
    """A copy of `model` whose hidden units have the endpoints' interpolated means and stds on `data`.

    REPAIR (Jordan et al. 2022): averaged weights shrink the variance of hidden units and the merged
    model collapses; rescaling each unit to its endpoints' statistics undoes that.
    Per layer whose outputs are a group's units, in graph order (each measured after the ones before
    it were fixed), with target moments mu_t = sum_i w_i mu_i and sigma_t = sum_i w_i sigma_i of the
    endpoints and mu, sigma of the model's unit:

        W[j] <- s_j W[j],   b[j] <- s_j (b[j] - mu[j]) + mu_t[j],   s_j = sigma_t[j] / (sigma[j] + eps)

    so that the unit's output has mean mu_t and std sigma_t. BatchNorm statistics are then recomputed
    (`reset_bn`).

    Parameters
    ----------
    model : nn.Module
        The merged model (an interpolation or a fusion); it is not changed.
    endpoints : sequence of nn.Module
        The models it was merged from.
    data : batches, Dataset or tensor
        Inputs on which the statistics are measured.
    weights : sequence of float, optional
        The interpolation weights of the endpoints (uniform by default; [1 - alpha, alpha] for a
        point of a path).
    couplings : dict of str to sequence of Tensor, optional
        For a fusion (`Fusion.couplings`), the maps from each endpoint's units to the model's: an
        endpoint's statistics are carried to the model's units as n_target pi_i @ mu_i. Without them the
        endpoints must be in the model's basis (aligned).
    limit : int
        Examples of `data` read for each measurement and for the BatchNorm statistics.
    eps : float
        Added to the model's std before dividing.

    Returns
    -------
    nn.Module
        The repaired copy of `model`.
    """
    weights = [1.0 / len(endpoints)] * len(endpoints) if weights is None else [float(w) for w in weights]
    out = copy.deepcopy(model)
    spec = infer_spec(out, example_for(out, data=data))
    trace = trace_of(spec)
    # the layers whose outputs are hidden units of a group: (weight, bias, node, group, unit axis, weight's out axis)
    layers = []
    for la in trace.layers():
        group = next((g for a, g in spec.axes_of.get(la.weight, []) if a == la.weight_axis), None)
        if group is not None and spec.layout(group, la.weight, la.weight_axis) == Layout():
            layers.append((la.weight, la.bias, la.node, group, la.axis, la.weight_axis))
    if not layers:
        return reset_bn(out, data, limit=limit)
    axes = {n: a for _, _, n, _, a, _ in layers}
    end_stats = []
    for i, e in enumerate(endpoints):
        st = unit_moments(e, trace_of(infer_spec(e, example_for(e, data=data))), axes, data, limit)
        if couplings is not None:  # map the endpoint's units onto the model's: barycentric average
            st = {n: tuple(len(couplings[g][i]) * couplings[g][i].double() @ v for v in st[n])
                  for _, _, n, g, _, _ in layers}
        end_stats.append(st)
    params = dict(out.named_parameters())
    for key, bias, node_name, group, axis, w_axis in layers:  # in graph order: later layers see earlier fixes
        mean_t = sum(w * st[node_name][0] for w, st in zip(weights, end_stats))
        std_t = sum(w * st[node_name][1] for w, st in zip(weights, end_stats))
        mean_m, std_m = unit_moments(out, trace, {node_name: axes[node_name]}, data, limit)[node_name]
        weight = params[key]
        scale = (std_t / (std_m + eps)).float()
        with torch.no_grad():
            shape = [1] * weight.dim()
            shape[w_axis] = -1
            weight.mul_(scale.view(shape).to(weight))
            if bias is not None:
                b = params[bias]
                b.copy_((scale * (b.double() - mean_m) + mean_t).to(b))
    return reset_bn(out, data, limit=limit)
