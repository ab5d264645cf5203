"""Alignment of a pair: the hidden-unit permutations that put `model` into `reference`'s basin.

Three methods over one permutation spec:
- "weight": weight matching (Ainsworth et al. 2022), coordinate descent over groups in random order,
  one linear assignment per step, until a sweep improves nothing;
- "activation": activation matching / neuron alignment (Tatro et al. 2020): correlation of
  standardized unit activations on data, one assignment per group;
- "weight_cov": weight matching in which each layer's input axis is weighted by the second moment
  E[x x^T] of that layer's inputs on data (Ferbach et al. 2024): directions the data never excites
  cost nothing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..zoo.batching import first_inputs
from .blockmatch import block_step, inner_groups, pair_scores
from ..errors import ModefuseError
from ..spec.infer import infer_spec, trace_of
from ..zoo.models import example_input as zoo_example_input
from .probe import input_second_moments, unit_correlations
from ..progress import bar
from .scoreterms import ScoreTerms
from .solvers import assignment
from ..spec.permutation_spec import PermutationSpec
from ..storage.statedict import check_finite, check_same_architecture
from ..spec.transport import permute_tensor

METHODS = ("weight", "activation", "weight_cov")


@dataclass
class Alignment:
    """`model` is the input model permuted toward the reference (same function); `perms` what was applied."""

    model: nn.Module
    perms: dict[str, torch.Tensor]
    spec: PermutationSpec
    method: str
    history: list[float] = field(default_factory=list)  # weight matching: objective after each sweep


def align(reference: nn.Module, model: nn.Module, method: str = "weight", example_input=None, data=None,
          seed: int = 0, spec: PermutationSpec | None = None, max_sweeps: int = 100, tol: float = 1e-3,
          limit: int = 5000) -> Alignment:
    """Permute `model`'s hidden units toward `reference`; neither input is changed.

    `data` (batches, a Dataset or a tensor of inputs; `limit` examples are used) is needed by
    "activation" and "weight_cov"; `spec` overrides the inferred permutation spec. Weight matching
    stops when a sweep over all groups raises its objective by less than `tol` (relative; 0: only
    when no permutation changes): on two trained MLPs the last 10 of 16 exact sweeps add 0.2% to the
    objective and leave the loss barrier as it is (benchmarks/align_speed.py).
    """
    if method not in METHODS:
        raise ModefuseError(f"unknown alignment method {method!r}; use one of {', '.join(METHODS)}")
    ref_state, state = reference.state_dict(), model.state_dict()
    check_same_architecture(ref_state, state, "the reference model", "the model to align")
    check_finite(ref_state, "the reference model")
    check_finite(state, "the model to align")
    if method != "weight" and data is None:
        raise ModefuseError(f"method {method!r} needs data: pass data= (a few thousand training inputs)")
    spec = (spec or infer_spec(reference, example_for(reference, example_input, data))).check(ref_state)
    history: list[float] = []
    if method == "activation":
        unit_nodes, trace = taps(spec, reference, example_input, data)
        corr = unit_correlations(reference, model, trace, unit_nodes, data, limit=limit)
        missing = [g for g in spec.groups if g not in corr]
        if missing:
            raise ModefuseError(f"no activations carry group {missing[0]!r}; align it by weights or pass a spec")
        perms = {g: assignment(corr[g]) for g in spec.groups}
    else:
        targets = dict(ref_state)
        if method == "weight_cov":
            _, trace = taps(spec, reference, example_input, data)
            for key, m2 in input_second_moments(reference, trace, data, limit=limit).items():
                w = targets[key]
                targets[key] = torch.tensordot(w, m2.to(w.dtype), dims=([1], [0])).movedim(-1, 1)
        perms, history = weight_matching(spec, targets, state, seed=seed, max_sweeps=max_sweeps, tol=tol,
                                         ref_inputs=ref_state if method == "weight_cov" else None)
    return Alignment(permuted_copy(model, spec, perms), perms, spec, method, history)


def permuted_copy(model: nn.Module, spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` with `perms` applied: each permuted tensor is made once, in place of its copy."""
    axes_of = spec.axes_of
    memo: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for k, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            if k in axes_of and id(t) not in memo:
                new = permute_tensor(t.detach(), k, axes_of[k], spec, perms)
                memo[id(t)] = nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new
    return copy.deepcopy(model, memo)


def weight_matching(spec: PermutationSpec, ref: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                    seed: int = 0, max_sweeps: int = 100, tol: float = 0.0,
                    init: Mapping[str, torch.Tensor] | None = None,
                    ref_inputs: Mapping[str, torch.Tensor] | None = None,
                    progress: bool = False) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Permutations maximizing sum over tensors of <ref, permuted state>; also the objective per sweep.

    `ref` and `state` may be checkpoints read on access (`LazyState`): then no tensor is kept.
    `progress`: a bar per sweep (on a terminal), for models whose sweeps take minutes.

    Stops after a sweep that changes no permutation or, with `tol` > 0, raises the objective by
    less than `tol` times its value (the last sweeps of exact convergence move it by ~1e-4 each).

    Exact coordinate descent, with the work that cannot change the answer left out: each tensor's
    score term is kept and refreshed where a permutation it depends on changed (`ScoreTerms`), and a
    group whose neighbours kept their permutations since its last solve keeps its own (same score).
    """
    device = next(iter(state.values())).device if isinstance(state, dict) else torch.device("cpu")
    perms = {g: (init[g].clone() if init and g in init else torch.arange(n, device=device))
             for g, n in spec.sizes.items()}
    axes_of = spec.axes_of
    terms = ScoreTerms(spec, ref, state, ref_inputs)
    # the groups each entry's score depends on (the other permuted axes of its tensor)
    depends = {(g, k, a): {h for ax, h in axes_of[k] if (ax, h) != (a, g)} for g, axes in spec.groups.items()
               for k, a in axes}
    neighbours = {g: set().union(*(depends[(g, k, a)] for k, a in axes)) for g, axes in spec.groups.items()}
    inner = {g: inner_groups(spec, g) for g in spec.groups}  # attention heads: the orders within them
    for g, hs in inner.items():
        neighbours[g] = (neighbours[g] | set().union(*(neighbours[h] for h in hs))) - {g}
    version = dict.fromkeys(spec.groups, 0)  # bumped whenever a group's permutation changes

    solved_at: dict[str, dict[str, int]] = {}
    rng = np.random.default_rng(seed)
    names = list(spec.groups)
    objective = _objective(spec, ref, state, perms)
    history: list[float] = []
    for sweep in range(max_sweeps):
        improved, sweep_gain = False, 0.0
        for g in bar(rng.permutation(names), desc=f"weight matching, sweep {sweep + 1}", unit="group",
                     enabled=progress):
            seen = {h: version[h] for h in neighbours[g]}
            if solved_at.get(g) == seen:  # same score matrix as at its last solve: same answer
                continue
            solved_at[g] = seen
            if inner[g]:
                gain = _block_step(g, inner[g], spec, ref, state, perms, terms, axes_of)
                if gain:
                    improved, sweep_gain = True, sweep_gain + gain
                    for h in (g, *inner[g]):
                        version[h] += 1
                continue
            score = terms.score(g, perms)
            new = assignment(score)
            idx = torch.arange(len(new), device=score.device)
            gain = (score[idx, new].double().sum() - score[idx, perms[g]].double().sum()).item()
            if gain > 1e-9 * max(1.0, abs(score[idx, perms[g]].sum().item())):
                perms[g], improved = new, True
                version[g] += 1
                sweep_gain += gain  # the objective's change: the score holds every term touching g
        objective += sweep_gain
        history.append(objective)
        if not improved or sweep_gain < tol * abs(objective):
            break
    return perms, history


def _block_step(g, inner, spec, ref, state, perms, terms, axes_of) -> float:
    """Solve outer group `g` (attention heads) with its inner groups; apply and return the gain, or 0."""
    shared = {e for entries in inner.values() for e in entries}
    plain = terms.score(g, perms, [(k, a) for k, a in spec.groups[g] if (k, a) not in shared])
    scores = {}
    for h, entries in inner.items():
        scores[h] = sum(pair_scores(spec, g, h, k, a, ref[k].float(), permute_tensor(
            state[k].float(), k, axes_of[k], spec, perms, skip={(a, x) for x in (g, *inner)})) for k, a in entries)
    gain, new_g, new_in = block_step(plain, scores, perms[g], {h: perms[h] for h in inner})
    if gain <= 1e-9 * max(1.0, abs(float(plain.diagonal().sum()))):
        return 0.0
    perms[g] = new_g
    perms.update(new_in)
    return gain


def _objective(spec, ref, state, perms) -> float:
    axes_of = spec.axes_of
    moved = {g for g, p in perms.items() if not torch.equal(p, torch.arange(len(p), device=p.device))}
    return float(sum(torch.dot(ref[k].double().flatten(), (permute_tensor(state[k], k, axes, spec, perms) if
                                                          moved.intersection(g for _, g in axes) else
                                                          state[k]).double().flatten())
                     for k, axes in axes_of.items()))


def example_for(model: nn.Module, example_input=None, data=None):
    """An input batch to trace `model` with: the one given, else the first of `data`, else a zoo model's shape."""
    if example_input is not None:
        return example_input
    if data is not None:
        return first_inputs(data)
    x = zoo_example_input(model)
    if x is None:
        raise ModefuseError("pass example_input= (one batch of inputs) so that the model can be traced")
    return x


def taps(spec: PermutationSpec, model: nn.Module, example_input, data):
    """(unit_nodes, trace): where each group's units can be read on data. A hand-written spec has no
    trace: the model is traced for it (the spec itself is left as it is)."""
    trace = trace_of(spec)
    if trace is None:
        traced = infer_spec(model, example_for(model, example_input, data))
        return traced.unit_nodes, trace_of(traced)
    return spec.unit_nodes, trace
