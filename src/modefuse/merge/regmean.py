"""RegMean (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models") after
alignment: each linear and convolution layer of the fused model is the least-squares fit of all the
models' outputs on their own inputs, a closed form in the Gram matrices of those inputs.

Why: averaging aligned weights treats every input direction alike, while the directions a layer's inputs
never take do not matter and the ones they take often matter most. RegMean weighs each model's weights
by its inputs' second moments G_i = E[z z^T] (z = [x, 1], conv: unfolded patches):

    Theta = (sum_i lambda_i G~_i + delta I)^-1 (sum_i lambda_i G~_i Theta_i + delta sum_i lambda_i Theta_i)

Theta_i = [W_i | b_i]^T of model i (aligned to model 0), G~_i = a G_i + (1 - a) diag(G_i) (the paper's
shrinking of the off-diagonal, a = `offdiag_scale`), delta = 1e-6 mean(diag(sum_i lambda_i G~_i)): input
directions no model's data takes keep the average. Other tensors (norms, embeddings, grouped or transposed
convolutions, tied weights) are averaged. Needs data (labels unused).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ModefuseError
from ..match.probe import input_grams
from ..spec.infer import infer_spec
from ..spec.trace import Layer, Trace, conv_geometry, trace_of
from .methods import (Fusion, FusionProblem, align_to_first, build_fused, mix_states, onto_own_units, problem_specs,
                      register_fuser, target_sizes)

RIDGE = 1e-6  # delta relative to the Gram's mean diagonal
LIMIT = 5000  # examples read (alignment, Gram matrices) unless fuse(limit=) says otherwise


@register_fuser("regmean", needs_data=True)
def regmean(p: FusionProblem) -> Fusion:
    """RegMean (Jin et al. 2023): models aligned to model 0, then each layer solved on its inputs' Gram matrices."""
    x, specs = problem_specs(p, need_example=True)
    if any(sp.sizes != specs[0].sizes for sp in specs[1:]) or (
            p.widths is not None and target_sizes(specs[0], p.widths) != specs[0].sizes):
        raise ModefuseError("regmean keeps model 0's widths and needs models of one width; to fuse into other "
                            "widths use method='wasserstein'")
    limit = p.limit or LIMIT
    models, states, moved = align_to_first(p, specs, x, limit)
    trace = trace_of(specs[0]) or trace_of(infer_spec(models[0], x))
    layers = solvable_layers(trace, states[0])
    fused = mix_states(states, p.lam)
    sums = {key: [0.0, 0.0] for key in layers}  # sum_i lambda_i G~_i and sum_i lambda_i G~_i Theta_i
    for lam, model, state in zip(p.lam, models, states):
        grams = input_grams(model, trace, {key: (la.input, rows) for key, (la, rows) in layers.items()},
                            p.data, limit=limit)
        for key, (la, _) in layers.items():
            g = grams[key]
            g = p.offdiag_scale * g + (1 - p.offdiag_scale) * torch.diag(torch.diagonal(g))
            sums[key][0] = sums[key][0] + lam * g
            sums[key][1] = sums[key][1] + lam * g @ _theta(la, state)
    for key, (la, _) in layers.items():
        a, b = sums[key]
        delta = RIDGE * torch.diagonal(a).mean().clamp_min(1e-30)
        avg = _theta(la, fused)
        theta = torch.linalg.solve(a + delta * torch.eye(len(a), dtype=a.dtype, device=a.device), b + delta * avg)
        _put(la, theta, fused)
    model = build_fused(models[0], fused, specs[0], specs[0].sizes)
    couplings = {g: [_identity_coupling(n, perms, g, model) for perms in moved] for g, n in specs[0].sizes.items()}
    return Fusion(model, couplings, specs[0], "regmean")


def solvable_layers(trace: Trace, state) -> dict[str, tuple[Layer, object]]:
    """The layers RegMean solves, by weight key: (the layer, the function giving its input's rows in the
    order of the weight's flattened input). Left out (averaged): grouped, transposed or string-padded
    convolutions, and weights read anywhere else too (tied)."""
    out = {}
    uses = trace.parameter_uses
    for la in trace.layers():
        if uses.get(la.weight) != 1 or (la.bias is not None and uses.get(la.bias) != 1):
            continue
        w = state[la.weight]
        if la.kind in ("linear", "addmm"):
            out[la.weight] = (la, lambda v, bias=la.bias is not None: _rows(v.reshape(-1, v.shape[-1]), bias))
        elif la.kind == "conv" and w.dim() in (3, 4):
            geo = conv_geometry(trace.node(la.node), w.dim() - 2)
            if geo is not None and geo[3] == 1:
                out[la.weight] = (la, lambda v, k=tuple(w.shape[2:]), g=geo, bias=la.bias is not None:
                                  _rows(_patches(v, k, g), bias))
    return out


def _patches(v: torch.Tensor, kernel: tuple, geo) -> torch.Tensor:
    """(positions, in_channels * prod(kernel)): the input patches a convolution's weight is applied to."""
    stride, padding, dilation, _ = geo
    if v.dim() == 3:  # conv1d as a conv2d of height 1
        v, kernel = v.unsqueeze(2), (1, *kernel)
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
    cols = F.unfold(v, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _rows(r: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([r, torch.ones(len(r), 1, dtype=r.dtype, device=r.device)], 1) if bias else r


def _theta(la: Layer, state) -> torch.Tensor:
    """[W | b]^T: (inputs (+1), outputs), float64."""
    w = state[la.weight].double()
    w = w if la.kind == "addmm" else w.reshape(w.shape[0], -1).T
    return torch.cat([w, state[la.bias].double()[None]], 0) if la.bias is not None else w


def _put(la: Layer, theta: torch.Tensor, state) -> None:
    w = state[la.weight]
    if la.bias is not None:
        state[la.bias] = theta[-1].to(state[la.bias].dtype)
        theta = theta[:-1]
    state[la.weight] = (theta if la.kind == "addmm" else theta.T.reshape(w.shape)).to(w.dtype).contiguous()


def _identity_coupling(n: int, perms, g: str, model) -> torch.Tensor:
    """Model i's units onto the fused model's (which are model 0's): a permutation, mass 1."""
    device = next(model.parameters()).device
    return onto_own_units(torch.eye(n, device=device) / n, perms, g)
