"""Weight matching (Ainsworth et al. 2022, Algorithm 1): exact coordinate descent over the groups of a
permutation spec, one linear assignment per step, until a sweep improves nothing."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..progress import bar
from ..spec.permutation_spec import PermutationSpec
from ..storage.heap import release_freed
from ..spec.transport import permute_tensor
from .blockmatch import block_step, inner_groups, pair_scores
from .scoreterms import ScoreTerms
from .solvers import assignment


def weight_matching(spec: PermutationSpec, ref: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                    seed: int = 0, max_sweeps: int = 100, tol: float = 0.0,
                    init: Mapping[str, torch.Tensor] | None = None, incoming_only: bool = False,
                    progress: bool = False) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Permutations maximizing sum over tensors of <ref, permuted state>; also the objective per sweep.

    `ref` and `state` may be checkpoints read on access (`LazyState`): then no tensor is kept.
    `progress`: a bar per sweep (on a terminal), for models whose sweeps take minutes.
    `incoming_only`: each group is scored by the tensors holding its units as outputs only (its rows, not
    the next layers' columns), as covariance-weighted matching does (Ferbach et al. 2024): a pass from
    the inputs to the outputs, repeated until no permutation changes; the objective is then the sum of
    those terms, computed after each sweep.

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
    terms = ScoreTerms(spec, ref, state)
    scored = {g: [(k, a) for k, a in axes if not (incoming_only and spec.is_input(k, a, len(_shape(state, k))))]
              for g, axes in spec.groups.items()}
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
            score = terms.score(g, perms, scored[g])
            new = assignment(score)
            idx = torch.arange(len(new), device=score.device)
            gain = (score[idx, new].double().sum() - score[idx, perms[g]].double().sum()).item()
            if gain > 1e-9 * max(1.0, abs(score[idx, perms[g]].sum().item())):
                perms[g], improved = new, True
                version[g] += 1
                sweep_gain += gain  # the objective's change: the score holds every term touching g
        objective = _objective(spec, ref, state, perms) if incoming_only else objective + sweep_gain
        history.append(objective)
        if not improved or sweep_gain < tol * abs(objective):
            break
    del terms  # its cached terms and scratch buffers, before the caller builds the aligned copy
    release_freed()
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


def _shape(state, k) -> tuple[int, ...]:
    return tuple(state.shapes[k]) if hasattr(state, "shapes") else tuple(state[k].shape)


def _objective(spec, ref, state, perms) -> float:
    axes_of = spec.axes_of
    moved = {g for g, p in perms.items() if not torch.equal(p, torch.arange(len(p), device=p.device))}
    return sum(_inner(ref[k], permute_tensor(state[k], k, axes, spec, perms) if moved.intersection(g for _, g in axes)
                      else state[k]) for k, axes in axes_of.items())


def _inner(x: torch.Tensor, y: torch.Tensor) -> float:
    """<x, y>: products in float32 (float64 if either is) summed by torch's cascade, relative error ~1e-7
    (float64 throughout took three times as long on large models for nothing coordinate descent uses)."""
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    return float((x.to(dtype) * y.to(dtype)).sum())
