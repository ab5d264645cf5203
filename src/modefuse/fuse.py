"""Fusion of K models into one: vanilla averaging, OTFusion, Wasserstein and Gromov-Wasserstein barycenters.

All methods share one loop over the permutation spec's groups (in graph order): for group g and
model i, a cost between target units and model-i units compares their incoming weights through the
couplings already found for the other axes (Akash et al. 2023, the design's algorithm notes):

    C_i[j, j'] = sum_{k,k'} (W_t[j, k] - W_i[j', k'])^2 pi_prev_i[k, k']

then a coupling pi_i solves OT between uniform marginals (exact, or Sinkhorn with `eps`), and the
target is the barycenter sum_i lambda_i transport(W_i, pi_i) (see `transport.transport`).
- "otfusion": the target is model 0 and stays so (Singh & Jaggi 2020);
- "wasserstein": the target is re-estimated after every sweep (free-support WB), any target width;
- "gromov": as "wasserstein", but a recurrent layer's hidden coupling also matches the
  hidden-to-hidden matrices (a fused Gromov-Wasserstein term of weight `alpha_h`), solved by
  alternating the coupling and the quadratic term's linearization;
  "wasserstein" ignores hidden-to-hidden matrices when coupling, as Wang et al. (2020) did.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import models as zoo
from .align import example_for
from .errors import ArchitectureMismatchError, ModefuseError
from .infer import infer_spec
from .solvers import ot_plan
from .spec import PermutationSpec
from .statedict import check_finite, check_same_architecture
from .transport import transport

METHODS = ("average", "otfusion", "wasserstein", "gromov")


@dataclass
class Fusion:
    """The fused model, and per group the K couplings (n_target x n_i, mass 1) that produced it."""

    model: nn.Module
    couplings: dict[str, list[torch.Tensor]]
    spec: PermutationSpec | None
    method: str
    history: list[float] = field(default_factory=list)  # largest coupling change per sweep


def fuse(models: Sequence[nn.Module], method: str = "wasserstein", weights: Sequence[float] | None = None,
         widths: Mapping[str, int] | Sequence[int] | None = None, data=None, example_input=None,
         eps: float | None = None, iters: int = 20, alpha_h: float = 1e3, progress: bool = False) -> Fusion:
    """Fuse `models` (same architecture; widths may differ for "wasserstein"/"gromov") into one.

    weights: lambda_i (default uniform); widths: target units per group (a dict, or a list in the
    order of the spec's groups; default: model 0's); eps: Sinkhorn regularization relative to the
    largest cost (default: exact OT).
    """
    if method not in METHODS:
        raise ModefuseError(f"unknown fusion method {method!r}; use one of {', '.join(METHODS)}")
    if not models:
        raise ModefuseError("fuse needs at least one model")
    lam = _weights(weights, len(models))
    states = [m.state_dict() for m in models]
    for i, s in enumerate(states):
        check_finite(s, f"model {i}")
    if method == "average":
        if widths is not None:
            raise ModefuseError("vanilla averaging cannot change widths; use method='wasserstein'")
        for i, s in enumerate(states[1:], 1):
            check_same_architecture(states[0], s, "model 0", f"model {i}")
        return Fusion(_build(models[0], _mix(states, lam), None, None), {}, None, method)

    x = example_for(models[0], example_input, data)
    specs = [infer_spec(m, example_for(m, example_input, data) if i else x) for i, m in enumerate(models)]
    _check_compatible(states, specs)
    sizes = _target_sizes(specs[0], widths)
    if method == "otfusion" and sizes != specs[0].sizes:
        raise ModefuseError("otfusion keeps model 0 as the target; to fuse into other widths use 'wasserstein'")
    fuser = _Fuser(specs, states, sizes, lam, method, eps, alpha_h)
    history = fuser.run(iters if method != "otfusion" else 2, progress)
    fused = _build(models[0], fuser.target, specs[0], sizes)
    target_spec = infer_spec(fused, x) if sizes != specs[0].sizes else specs[0]
    return Fusion(fused, fuser.couplings, target_spec, method, history)


class _Fuser:
    def __init__(self, specs, states, sizes, lam, method, eps, alpha_h):
        self.specs, self.states, self.sizes, self.lam = specs, states, sizes, lam
        self.method, self.eps, self.alpha_h = method, eps, alpha_h
        self.groups = list(specs[0].groups)
        k = len(states)
        dev = next(iter(states[0].values())).device
        # model 0 starts coupled to the target by a monotone plan (identity at equal width); the
        # others by the independent coupling, until the first sweep finds theirs
        self.couplings = {g: [_monotone(sizes[g], specs[i].sizes[g], dev) if i == 0 else
                              torch.full((sizes[g], specs[i].sizes[g]), 1.0 / (sizes[g] * specs[i].sizes[g]),
                                         device=dev) for i in range(k)] for g in self.groups}
        self.target = transport(states[0], specs[0], {g: c[0] for g, c in self.couplings.items()})
        self.spec_t = specs[0]

    def run(self, sweeps: int, progress: bool) -> list[float]:
        history = []
        for _ in tqdm(range(sweeps), desc=f"fusing ({self.method})", disable=not progress, leave=False):
            change = 0.0
            self.done, self.forward_refs = set(), False
            for g in self.groups:
                self.done.add(g)
                for i in range(len(self.states)):
                    if self.method == "otfusion" and i == 0:
                        continue  # model 0 is the target
                    new = self.couple(g, i)
                    change = max(change, (new - self.couplings[g][i]).abs().max().item())
                    self.couplings[g][i] = new
            if self.method != "otfusion":
                self.target = self.barycenter()
            history.append(change)
            if change < 1e-7 or (self.method == "otfusion" and not self.forward_refs):
                break  # otfusion: one sweep is exact unless a group was costed through a later one
        if self.method == "otfusion":
            self.target = self.barycenter()
        return history

    def barycenter(self) -> dict[str, torch.Tensor]:
        """sum_i lambda_i transport(W_i, pi_i), each model transported as the sum reaches it."""
        return _mix((transport(s, sp, {g: self.couplings[g][i] for g in self.groups})
                     for i, (s, sp) in enumerate(zip(self.states, self.specs))), self.lam)

    def couple(self, g: str, i: int) -> torch.Tensor:
        spec_i, state_i = self.specs[i], self.states[i]
        linear, recurrent = 0.0, []
        for key, axis in spec_i.groups[g]:
            if spec_i.is_input(key, axis, state_i[key].dim()):
                continue  # units are compared by their incoming weights
            others = [(a, h) for a, h in spec_i.axes_of[key] if a != axis]
            if any(h == g for _, h in others):
                recurrent.append((key, axis, others))
                continue
            linear = linear + self.entry_cost(key, axis, g, i, others, {})
        if not recurrent or self.method != "gromov":
            return ot_plan(linear, eps=self.eps)
        # fused Gromov-Wasserstein: linearize the quadratic term at the current coupling, re-solve.
        # Exact OT in this loop beat entropic OT (eps 1e-2, 1e-3 relative) on Fashion-MNIST LSTMs.
        eps = self.eps
        pi = ot_plan(linear, eps=eps) if isinstance(linear, torch.Tensor) else self.couplings[g][i]
        for _ in range(10):
            quad = sum(self.entry_cost(k, a, g, i, o, {g: pi}) for k, a, o in recurrent)
            new = ot_plan(linear + self.alpha_h * quad, eps=eps)
            if (new - pi).abs().max().item() < 1e-6:
                return new
            pi = new
        return pi

    def entry_cost(self, key, axis, g, i, others, override) -> torch.Tensor:
        """sum_{k,k',r} (W_t[j,k,r] - W_i[j',k',r])^2 pi[k,k'] for the rows of tensor `key` on `axis`."""
        spec_i = self.specs[i]
        if len(others) > 1:
            raise ModefuseError(f"tensor {key!r} has units of more than two groups; fusion supports at most one "
                                f"other permuted axis per tensor")
        wt = _rows(self.target[key].float(), key, axis, g, self.sizes[g], others, self.spec_t, self.sizes)
        wi = _rows(self.states[i][key].float(), key, axis, g, spec_i.sizes[g], others, spec_i, spec_i.sizes)
        if others:
            h = others[0][1]
            self.forward_refs |= h not in self.done
            pi = override.get(h, self.couplings[h][i]).to(wt)
        else:
            pi = torch.ones(1, 1, dtype=wt.dtype, device=wt.device)
        a, b = pi.sum(1), pi.sum(0)
        at = (wt ** 2).sum(2) @ a
        bi = (wi ** 2).sum(2) @ b
        cross = (wt.transpose(1, 2) @ pi).transpose(1, 2).reshape(len(wt), -1) @ wi.reshape(len(wi), -1).T
        return at[:, None] + bi[None, :] - 2 * cross


def _rows(t: torch.Tensor, key: str, axis: int, g: str, n: int, others, spec: PermutationSpec,
          sizes: Mapping[str, int]) -> torch.Tensor:
    """Tensor `key` as (n units of g, K units of the other permuted axis or 1, the rest)."""
    lay = _whole_axis(spec.layout(g, key, axis), n, t.shape[axis], key, axis)
    if not others:
        x = t.movedim(axis, 0).reshape(lay.tiles, n, lay.block, -1)
        return x.permute(1, 0, 2, 3).reshape(n, 1, -1)
    oa, h = others[0]
    m = sizes[h]
    lh = _whole_axis(spec.layout(h, key, oa), m, t.shape[oa], key, oa)
    x = t.movedim((axis, oa), (0, 1)).reshape(lay.tiles, n, lay.block, lh.tiles, m, lh.block, -1)
    return x.permute(1, 4, 0, 2, 3, 5, 6).reshape(n, m, -1)


def _whole_axis(layout, n: int, size: int, key: str, axis: int):
    if layout.offset != 0 or layout.tiles * layout.block * n != size:
        raise ModefuseError(f"axis {axis} of {key!r} holds units of several groups (a concatenation?); fusion "
                            f"needs each axis to belong to one group")
    return layout


def _weights(weights, k: int) -> list[float]:
    if weights is None:
        return [1.0 / k] * k
    w = [float(v) for v in weights]
    if len(w) != k or any(v < 0 for v in w) or sum(w) <= 0:
        raise ModefuseError(f"weights must be {k} non-negative numbers with a positive sum, got {weights}")
    return [v / sum(w) for v in w]


def _mix(states: Iterable[Mapping[str, torch.Tensor]], lam: list[float]) -> dict[str, torch.Tensor]:
    """sum_i lam_i states_i, accumulated one state at a time (a generator keeps one in memory);
    integer tensors (counters such as num_batches_tracked) are taken from the first."""
    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for weight, state in zip(lam, states):
        for k, v in state.items():
            if k not in acc:
                dtypes[k] = v.dtype
                acc[k] = v.float() * weight if v.is_floating_point() else v.clone()
            elif v.is_floating_point():
                acc[k].add_(v.float(), alpha=weight)
    return {k: v.to(dtypes[k]) for k, v in acc.items()}


def _monotone(n_t: int, n_s: int, device) -> torch.Tensor:
    """The monotone (north-west corner) coupling of uniform marginals: identity / n when n_t == n_s."""
    if n_t == n_s:
        return torch.eye(n_t, device=device) / n_t
    pi = torch.zeros(n_t, n_s, device=device)
    i = j = 0
    rt, rs = 1.0 / n_t, 1.0 / n_s
    while i < n_t and j < n_s:
        m = min(rt, rs)
        pi[i, j] += m
        rt -= m
        rs -= m
        if rt <= 1e-12:
            i, rt = i + 1, 1.0 / n_t
        if rs <= 1e-12:
            j, rs = j + 1, 1.0 / n_s
    return pi


def _target_sizes(spec: PermutationSpec, widths) -> dict[str, int]:
    if widths is None:
        return dict(spec.sizes)
    if isinstance(widths, Mapping):
        unknown = [g for g in widths if g not in spec.sizes]
        if unknown:
            raise ModefuseError(f"no group {unknown[0]!r} in the model; its groups are: {', '.join(spec.sizes)}")
        return {g: int(widths.get(g, n)) for g, n in spec.sizes.items()}
    widths = list(widths)
    if len(widths) != len(spec.sizes):
        raise ModefuseError(f"widths has {len(widths)} entries but the model has {len(spec.sizes)} groups: "
                            f"{', '.join(spec.sizes)}")
    return {g: int(w) for g, w in zip(spec.sizes, widths)}


def _check_compatible(states, specs) -> None:
    """Same tensors and groups; shapes may differ only along grouped axes."""
    for i in range(1, len(states)):
        if list(specs[i].groups) != list(specs[0].groups):
            raise ArchitectureMismatchError(f"model {i} has hidden-unit groups {list(specs[i].groups)}, model 0 "
                                            f"{list(specs[0].groups)}: the architectures differ")
        for key, v in states[0].items():
            if key not in states[i]:
                raise ArchitectureMismatchError(f"architectures differ: model 0 has tensor {key!r}, model {i} lacks it")
            grouped = {a for a, _ in specs[0].axes_of.get(key, [])}
            w = states[i][key]
            if w.dim() != v.dim() or any(w.shape[d] != v.shape[d] for d in range(v.dim()) if d not in grouped):
                raise ArchitectureMismatchError(f"architectures differ at tensor {key!r}: {tuple(v.shape)} in "
                                                f"model 0, {tuple(w.shape)} in model {i}")
        extra = [k for k in states[i] if k not in states[0]]
        if extra:
            raise ArchitectureMismatchError(f"architectures differ: model {i} has tensor {extra[0]!r}, model 0 lacks it")


def _build(model0: nn.Module, state: dict[str, torch.Tensor], spec, sizes) -> nn.Module:
    """A module of model 0's architecture holding `state`, at the target widths.

    Zoo MLPs and single-layer RNN/LSTMs are rebuilt from their architecture with the new widths (so
    their checkpoints rebuild them); any other module is copied and its tensors replaced, the layers'
    size attributes updated (its checkpoint then loads with mf.load(path, model=...)).
    """
    if spec is None or sizes == spec.sizes:
        out = copy.deepcopy(model0)
        out.load_state_dict(state)
        return out
    arch = getattr(model0, "arch", None)
    kw = None
    if arch and arch["name"] == "mlp":
        kw = {**arch["kwargs"], "widths": [sizes[g] for g in spec.groups]}
    elif arch and arch["name"] in ("rnn", "lstm") and arch["kwargs"].get("num_layers", 1) == 1:
        kw = {**arch["kwargs"], "hidden": sizes[next(iter(spec.groups))]}
    if kw is not None:
        out = zoo.build(arch["name"], **kw)
        out.load_state_dict(state)
        return out
    if any(isinstance(m, nn.RNNBase) for m in model0.modules()):
        raise ModefuseError("fusing recurrent layers into other widths is supported for the zoo's RNN and LSTM")
    out = copy.deepcopy(model0)
    for name, module in out.named_modules():
        prefix = f"{name}." if name else ""
        for pname in list(module._parameters):
            if module._parameters[pname] is not None:
                module._parameters[pname] = nn.Parameter(state[prefix + pname].clone())
        for bname in list(module._buffers):
            if module._buffers[bname] is not None:
                module._buffers[bname] = state[prefix + bname].clone()
        _resize_attributes(module)
    out.arch = None  # the zoo's width multipliers cannot describe per-group widths
    return out


def _resize_attributes(m: nn.Module) -> None:
    """Make a layer's size attributes agree with its (replaced) weights."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = w.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.num_features = m.running_mean.shape[0] if m.running_mean is not None else w.shape[0]
    elif isinstance(m, nn.GroupNorm):
        m.num_channels = w.shape[0]
        if m.num_groups != 1:
            m.num_groups = m.num_channels
    elif isinstance(m, nn.LayerNorm) and w is not None:
        m.normalized_shape = tuple(w.shape)
