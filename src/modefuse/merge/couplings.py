"""Couplings of K models' hidden units to a target, group by group: the primitives of transport-based fusion.

The transport-based methods (`methods.py`) share this loop over the permutation spec's groups (in graph order). Each unit of group g
in model i has a feature vector; with `cost="weight"` it is the unit's whole incoming vector (every
tensor of the group along its unit axis, [W | b], conv kernels, norm parameters), with the other
groups' axes already transported into the target's basis by their couplings (OTFusion, Singh & Jaggi
2020; the WB paper's cost through the previous layer's coupling, Akash et al. 2023), and with
`outgoing` also its outgoing weights; with `cost="activation"` it is the unit's activations on a few
hundred training examples. Then

    C_i[j, j'] = || F_target[j] - F_i[j'] ||^2,    pi_i = OT(uniform, uniform, C_i)

(exact, or Sinkhorn with `eps`), and the target is the barycenter sum_i lambda_i n pi_i F_i.
- "otfusion": the target is model 0 and stays so;
- "wasserstein": per group, couplings and barycenter alternate until no coupling changes (free-support
  WB, any target width);
- "gromov": as "wasserstein", but a recurrent layer's hidden coupling also matches the
  hidden-to-hidden matrices (a fused Gromov-Wasserstein term of weight `alpha_h`: their rows,
  transported by the current hidden coupling, join the features; re-solved until stable);
  "wasserstein" ignores hidden-to-hidden matrices when coupling, as Wang et al. (2020) did.
The fused model is the barycenter of the K models transported by their couplings
(`transport.transport_tensor`), accumulated one tensor at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import torch

from ..errors import ModefuseError
from ..progress import bar
from ..spec.transport import as_permutation, transport_tensor, unit_rows
from ..match.solvers import ot_plan


class _Entry(NamedTuple):
    """A tensor axis holding units of the group being coupled, as it enters the weight features."""

    key: str
    axis: int
    others: list[tuple[int, str]]  # the tensor's other grouped axes: (axis, group)
    weight: float  # alpha_h for hidden-to-hidden matrices, else 1
    recurrent: bool  # one of the other axes is the group itself


@dataclass(frozen=True)
class CouplingRule:
    """How a transport-based method couples each group: to model 0 or to a free barycenter, and whether a
    recurrent layer's hidden-to-hidden matrices join the features (a fused Gromov-Wasserstein term)."""

    free_target: bool  # re-estimate the target as the barycenter (else model 0 stays the target)
    recurrent: bool  # hidden-to-hidden matrices join the hidden units' features (fused GW term)


class Fuser:
    """Couplings of every model to the target, group by group; the target is never materialized whole."""

    def __init__(self, specs, states, sizes, lam, method: CouplingRule, eps, alpha_h, outgoing, acts):
        self.specs, self.states, self.sizes, self.lam = specs, states, sizes, lam
        self.method, self.eps, self.alpha_h, self.outgoing, self.acts = method, eps, alpha_h, outgoing, acts
        self.axes = [sp.axes_of for sp in specs]
        self.groups = list(specs[0].groups)
        k = len(states)
        dev = next(iter(states[0].values())).device
        # model 0 starts coupled to the target by the monotone plan (identity at equal width): the target
        # starts as model 0. The others are uncoupled until their group is reached.
        self.anchor = {g: monotone(sizes[g], specs[0].sizes[g], dev) for g in self.groups}
        self.couplings: dict[str, list[torch.Tensor | None]] = {
            g: [self.anchor[g]] + [None] * (k - 1) for g in self.groups}

    def run(self, max_sweeps: int, tol: float, progress: bool, desc: str) -> list[float]:
        """Sweep over the groups until no coupling moves by `tol` or more; the largest change per sweep."""
        changes = []
        for _ in bar(range(max_sweeps), desc=desc, enabled=progress, unit="sweep"):
            self.done: set[str] = set()
            self.incomplete = False  # some feature used a coupling not yet found in this sweep
            change = max(self.fit_group(g, max_sweeps, tol) for g in self.groups)
            changes.append(change)
            if change < tol or not self.incomplete:
                break  # without forward references one sweep is exact: each group sees its final inputs
        stuck = [g for g in self.groups if any(pi is None for pi in self.couplings[g])]
        if stuck:
            raise ModefuseError(f"group {stuck[0]!r} was never coupled: every tensor holding its units waits for "
                                f"another group's coupling; use cost='activation', or raise max_sweeps")
        return changes

    def fit_group(self, g: str, max_steps: int, tol: float = 1e-7) -> float:
        """Couple every model's units of `g` to the target's; returns the largest coupling change.

        First to model 0 (through its monotone plan: itself at equal widths), as OTFusion does; then,
        for a free target, to the barycenter of the models as coupled, until no coupling changes. The
        first step matters: started from the previous sweep's couplings instead, the barycenter of
        K = 2 models holds half of each model and keeps whatever coupling it starts from. At another
        width than model 0's, model 0 squeezed by the monotone plan is no model at all: there it only
        starts the first sweep, and later sweeps start from the barycenter.
        """
        old = list(self.couplings[g])
        k = len(self.states)
        same_width = self.sizes[g] == self.specs[0].sizes[g]
        start = 1 if self.method.free_target and not same_width and None not in old else 0
        for step in range(start, max_steps if self.method.free_target else 1):
            free = step > 0  # the target is the barycenter (else model 0 through its monotone plan)
            # model 0 is coupled too when the target is the barycenter or model 0 in another width
            movable = list(range(k)) if free or not same_width else list(range(1, k))
            entries = self.entries(g, movable)
            if self.acts is None and not entries:  # coupled in a later sweep, once its inputs are
                self.done.add(g)
                return 1.0
            target = self.target_features(g, entries, free)
            new = list(self.couplings[g])
            if 0 not in movable:
                new[0] = self.anchor[g]  # the target is model 0 itself
            for i in movable:
                new[i] = self.couple(g, i, entries, target)
            settled = all(p is not None and (n - p).abs().max().item() < tol
                          for n, p in zip(new, self.couplings[g]))
            self.couplings[g] = new
            if settled and step > 0:
                break
        self.done.add(g)
        return max((1.0 if p is None else (n - p).abs().max().item()) for n, p in zip(self.couplings[g], old))

    def couple(self, g: str, i: int, entries: list[_Entry], target: list[torch.Tensor]) -> torch.Tensor:
        """The OT plan from model i's units of `g` to the target's.

        With hidden-to-hidden entries (gromov) the cost depends on the plan itself (a fused
        Gromov-Wasserstein problem): solve it at a linearization, the hidden-to-hidden columns
        transported by the current plan (at first, the plan found without them), until it stops changing.
        """
        if not any(e.recurrent for e in entries):
            return ot_plan(sqdist(target, self.features(g, i, entries)), eps=self.eps)
        pi = self.couplings[g][i]
        if pi is None:
            keep = [j for j, e in enumerate(entries) if not e.recurrent]
            pi = ot_plan(sqdist([target[j] for j in keep], self.features(g, i, [entries[j] for j in keep])),
                         eps=self.eps)
        for _ in range(10):
            new = ot_plan(sqdist(target, self.features(g, i, entries, own=pi)), eps=self.eps)
            if (new - pi).abs().max().item() < 1e-7:
                break
            pi = new
        return new

    def entries(self, g: str, movable: list[int]) -> list[_Entry]:
        """The tensors whose rows along a unit axis of `g` make the weight features; an entry whose
        other axes are not yet coupled for every `movable` model waits for a later sweep."""
        if self.acts is not None:
            return []
        spec, state, out, waiting = self.specs[0], self.states[0], [], False
        for key, axis in spec.groups[g]:
            t = state[key]
            if not t.is_floating_point() or (spec.is_input(key, axis, t.dim()) and not self.outgoing):
                continue
            others = [(a, h) for a, h in self.axes[0][key] if a != axis]
            recurrent = any(h == g for _, h in others)  # hidden-to-hidden: the fused Gromov-Wasserstein term
            if recurrent and not self.method.recurrent:
                continue
            if any(self.couplings[h][i] is None for _, h in others if h != g for i in movable):
                self.incomplete = waiting = True
                continue
            # groups sharing this axis (attention heads, the order within them): applied once coupled
            beside = [(a, h) for a, h in self.axes[0][key] if a == axis and h != g]
            if any(self.couplings[h][i] is None for _, h in beside for i in movable):
                self.incomplete = True
            others += [(a, h) for a, h in beside if all(self.couplings[h][i] is not None for i in movable)]
            self.incomplete |= any(h not in self.done and h != g for _, h in others)
            out.append(_Entry(key, axis, others, self.alpha_h if recurrent else 1.0, recurrent))
        if not out and not waiting:
            raise ModefuseError(f"group {g!r} has no incoming weights to compare its units by; use cost='activation'")
        return out  # empty: every tensor waits for a group coupled later in this sweep

    def features(self, g: str, i: int, entries: list[_Entry], own: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Model i's units of `g` as feature rows, one block per entry (activations: one block): the
        entry's rows with its other axes transported (`g`'s own axis, in hidden-to-hidden matrices, by `own`)."""
        if self.acts is not None:
            if g not in self.acts[i]:
                raise ModefuseError(f"no graph node carries the units of group {g!r} plainly, so their activations "
                                    f"cannot be read; use cost='weight'")
            return [self.acts[i][g]]
        spec, parts = self.specs[i], []
        for e in entries:
            plans = {h: own if h == g and own is not None else self.couplings[h][i] for _, h in e.others}
            t = transport_tensor(self.states[i][e.key].float(), e.key, e.others, spec, plans)
            rows = unit_rows(t, spec, g, e.key, e.axis)
            parts.append(rows if e.weight == 1.0 else rows * math.sqrt(e.weight))
        return parts

    def target_features(self, g: str, entries: list[_Entry], free: bool) -> list[torch.Tensor]:
        """Model 0's features through its monotone plan (OTFusion's target), or with a `free` target the
        barycenter sum_i lam_i n pi_i F_i of the models as coupled."""
        plans = self.couplings[g]
        if not free:
            pi = self.anchor[g]
            f = self.features(g, 0, entries, own=pi)
            return f if pi.shape[0] == pi.shape[1] else [len(pi) * pi @ x for x in f]
        out = None
        for lam, pi, i in zip(self.lam, plans, range(len(plans))):
            moved = [lam * len(pi) * pi @ f for f in self.features(g, i, entries)]
            out = moved if out is None else [a.add_(b) for a, b in zip(out, moved)]
        return out

    def fused_state(self) -> dict[str, torch.Tensor]:
        """sum_i lambda_i transport(W_i, pi_i), one tensor at a time."""
        plans = [{g: c[i] for g, c in self.couplings.items()} for i in range(len(self.states))]
        perms = [{g: as_permutation(pi) for g, pi in p.items()} for p in plans]  # once per model, not per tensor
        return {key: mix_tensors((transport_tensor(s[key], key, ax.get(key, []), sp, p, q)
                                   for s, sp, ax, p, q in zip(self.states, self.specs, self.axes, plans, perms)),
                                  self.lam)
                for key in self.states[0]}


def sqdist(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared Euclidean distances between the rows of a and b, each given as column blocks (computed in
    float64, so near-ties are resolved alike on every platform; both sets moved by their common mean first,
    so that an offset the rows share cannot swamp their differences in |a|^2 + |b|^2 - 2 a.b)."""
    a, b = torch.cat(list(a), 1).double(), torch.cat(list(b), 1).double()
    shift = (a.sum(0) + b.sum(0)) / (len(a) + len(b))
    a, b = a - shift, b - shift
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)


def mix_tensors(tensors: Iterable[torch.Tensor], lam: list[float]) -> torch.Tensor:
    """sum_i lam_i tensors_i, accumulated one at a time; integer tensors (counters such as
    num_batches_tracked) are taken from the first."""
    acc = None
    for weight, t in zip(lam, tensors):
        if acc is None:
            dtype = t.dtype
            if not t.is_floating_point():
                return t.clone()
            acc = t.float() * weight
        else:
            acc.add_(t.float(), alpha=weight)
    return acc.to(dtype)


def monotone(n_t: int, n_s: int, device) -> torch.Tensor:
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
