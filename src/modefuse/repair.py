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

from .batching import first_inputs
from .bn import reset_bn
from .infer import infer_spec
from .probe import as_samples, tap
from .batching import batches

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _unit_stats(model, graph, names, axes, data, limit) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = tap(model, graph, names).eval()
    s1: dict = {}
    s2: dict = {}
    n = dict.fromkeys(names, 0)
    device = next(model.parameters()).device
    with torch.no_grad():
        for x, _ in batches(data, 500, device=device, limit=limit):
            for name, t in zip(names, g(x)):
                v = as_samples(t, axes[name])
                s1[name] = s1.get(name, 0) + v.sum(0)
                s2[name] = s2.get(name, 0) + (v * v).sum(0)
                n[name] += len(v)
    out = {}
    for name in names:
        mean = s1[name] / n[name]
        out[name] = mean, (s2[name] / n[name] - mean ** 2).clamp_min(0).sqrt()
    return out


def repair(model: nn.Module, endpoints: Sequence[nn.Module], data, weights: Sequence[float] | None = None,
           couplings: Mapping[str, Sequence[torch.Tensor]] | None = None, limit: int = 5000,
           eps: float = 1e-5) -> nn.Module:
    """A copy of `model` whose hidden units have the endpoints' interpolated means and stds on `data`.

    weights: the interpolation weights of the endpoints (uniform by default; [1 - alpha, alpha] for a
    point of a path). couplings: for a fusion (`Fusion.couplings`), the maps from each endpoint's units
    to the model's; without them the endpoints must be in the model's basis (aligned).
    """
    weights = [1.0 / len(endpoints)] * len(endpoints) if weights is None else [float(w) for w in weights]
    out = copy.deepcopy(model)
    x = first_inputs(data)
    spec = infer_spec(out, x)
    graph = spec.graph_module.graph
    # the layers whose outputs are hidden units of a group: (module name, node name, group, unit axis)
    layers = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(out.get_submodule(node.target), _LAYERS):
            key = f"{node.target}.weight"
            group = next((g for a, g in spec.axes_of.get(key, []) if a == 0), None)
            if group is not None:
                axis = 1 if not isinstance(out.get_submodule(node.target), nn.Linear) else -1
                layers.append((node.target, node.name, group, axis))
    if not layers:
        return reset_bn(out, data, limit=limit)
    names = [n for _, n, _, _ in layers]
    axes = {n: a for _, n, _, a in layers}
    end_stats = []
    for i, e in enumerate(endpoints):
        espec = infer_spec(e, x)
        st = _unit_stats(e, espec.graph_module.graph, names, axes, data, limit)
        if couplings is not None:  # map the endpoint's units onto the model's: barycentric average
            st = {n: tuple(len(couplings[g][i]) * couplings[g][i].double() @ v for v in st[n])
                  for _, n, g, _ in layers}
        end_stats.append(st)
    for module_name, node_name, group, axis in layers:  # in graph order: later layers see earlier fixes
        mean_t = sum(w * st[node_name][0] for w, st in zip(weights, end_stats))
        std_t = sum(w * st[node_name][1] for w, st in zip(weights, end_stats))
        mean_m, std_m = _unit_stats(out, graph, [node_name], axes, data, limit)[node_name]
        layer = out.get_submodule(module_name)
        scale = (std_t / (std_m + eps)).float()
        with torch.no_grad():
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.mul_(scale.view(shape).to(layer.weight))
            if layer.bias is not None:
                layer.bias.copy_((scale * (layer.bias.double() - mean_m) + mean_t).to(layer.bias))
    return reset_bn(out, data, limit=limit)
