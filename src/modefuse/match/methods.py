"""The alignment methods, one small unit each, chosen by name from a registry.

A method gets the pair and its checked spec (`AlignProblem`) and returns the permutations of the
model's groups and, for iterative methods, the objective per sweep. Adding one is one function and one
`@register_aligner` line; the test suite runs every registered method through the same contract tests
(a planted permutation recovered exactly, the function kept).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import ModefuseError
from ..registry import Registry, first_line
from ..spec.permutation_spec import PermutationSpec
from .blockmatch import block_step, inner_groups
from .probe import block_correlations, cross_moments, input_second_moments, joint_points, taps, unit_correlations
from .solvers import assignment
from .weight_matching import weight_matching


@dataclass(frozen=True)
class AlignProblem:
    """What every alignment method is given: the pair, its states and spec, data and the stopping rule."""

    reference: nn.Module
    model: nn.Module
    spec: PermutationSpec
    ref_state: Mapping[str, torch.Tensor]
    state: Mapping[str, torch.Tensor]
    example_input: object = None
    data: object = None
    seed: int = 0
    max_sweeps: int = 100
    tol: float = 1e-3
    limit: int = 5000


Perms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AlignMethod:
    name: str
    run: Callable[[AlignProblem], tuple[Perms, list[float]]]
    needs_data: bool
    summary: str


ALIGNERS: Registry[AlignMethod] = Registry("alignment method")


def register_aligner(name: str, needs_data: bool = False, summary: str = ""):
    """Decorator: `fn(problem) -> (perms, history)` becomes alignment method `name` of `mf.align`.

    Adds a method without touching `align`: `align(a, b, method=name)` checks the pair, infers or checks
    the spec, calls `fn` with an `AlignProblem` (the pair, their state_dicts, the checked spec, data,
    seed and stopping rule) and builds the permuted copy from what it returns.

    Parameters
    ----------
    name : str
        The method's name for `align(method=...)` and the command line; an existing name is replaced.
    needs_data : bool
        The method reads activations: `align` refuses to run it without `data=`, and the command line
        loads training data for it.
    summary : str
        A one-line description kept in the registry (default: the first line of `fn`'s docstring).

    Returns
    -------
    callable
        The decorator; it registers `fn` and returns it unchanged. `fn` returns `(perms, history)`: per
        group of `problem.spec` a LongTensor perm (unit i of the result is unit perm[i] of the model) and
        a list of objective values per iteration (empty if the method is not iterative).
    """
    return ALIGNERS.register(name, lambda fn: AlignMethod(name, fn, needs_data, summary or first_line(fn)))


def get_aligner(name: str) -> AlignMethod:
    return ALIGNERS.unit(name)


@register_aligner("weight")
def weight(p: AlignProblem) -> tuple[Perms, list[float]]:
    """Weight matching (Ainsworth et al. 2022): maximize sum_k <W_a[k], P W_b[k] P'^T> over permutations."""
    return weight_matching(p.spec, p.ref_state, p.state, seed=p.seed, max_sweeps=p.max_sweeps, tol=p.tol)


@register_aligner("activation", needs_data=True)
def activation(p: AlignProblem) -> tuple[Perms, list[float]]:
    """Activation matching (Tatro et al. 2020): one assignment per group on the correlation of
    standardized unit activations on data. Attention heads are matched with the order within them
    (`blockmatch.block_step`): the score of pairing head i with head j is the best matching of their
    dimensions' correlations, then each inner order is solved for the chosen heads."""
    unit_nodes, trace = taps(p.spec, p.reference, p.example_input, p.data)
    inner = {g: inner_groups(p.spec, g) for g in p.spec.groups}
    joint = {(g, h): joint_points(unit_nodes, g, h) for g, hs in inner.items() for h in hs}
    points = {q for nodes in unit_nodes.values() for q in nodes} | {q for js in joint.values() for q in js}
    stats = cross_moments(p.reference, p.model, trace, points, p.data, limit=p.limit)  # one pass over the data
    corr = unit_correlations(stats, trace, unit_nodes)
    missing = [g for g in p.spec.groups if g not in corr]
    if missing:
        raise ModefuseError(f"no activations carry group {missing[0]!r}; align it by weights or pass a spec")
    perms = {g: assignment(corr[g]) for g in p.spec.groups}
    for g, hs in inner.items():
        if hs and all(joint[(g, h)] for h in hs):
            n = p.spec.sizes[g]
            scores = {h: block_correlations(stats, joint[(g, h)], (n, p.spec.sizes[h])) for h in hs}
            _, perms[g], inner_perms = block_step(torch.zeros(n, n, dtype=torch.float64), scores, perms[g],
                                                  {h: perms[h] for h in hs})
            perms.update(inner_perms)
    return perms, []


@register_aligner("weight_cov", needs_data=True)
def weight_cov(p: AlignProblem) -> tuple[Perms, list[float]]:
    """Covariance-weighted weight matching (Ferbach et al. 2024): layer by layer from the inputs, the
    permutation maximizing <W_a M, P W_b Q^T> + <b_a, P b_b>, M = E[x x^T] of the layer's inputs in model
    a on data (Q: the permutation already found for those inputs), so directions the data never excites
    cost nothing."""
    _, trace = taps(p.spec, p.reference, p.example_input, p.data)
    targets = dict(p.ref_state)
    for key, m2 in input_second_moments(p.reference, trace, p.data, limit=p.limit).items():
        targets[key] = _weighted_by_inputs(targets[key], m2)
    return weight_matching(p.spec, targets, p.state, seed=p.seed, max_sweeps=p.max_sweeps, tol=p.tol,
                           incoming_only=True)


def _weighted_by_inputs(w: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """W M over the input axis (axis 1). A grouped convolution's output channels each see their group's
    inputs only (a depthwise one, one channel): each group's weights take that group's block of M."""
    m2 = m2.to(w.dtype)
    groups = m2.shape[0] // w.shape[1]
    if groups == 1:
        return torch.tensordot(w, m2, dims=([1], [0])).movedim(-1, 1)
    per = w.shape[1]
    blocks = torch.stack([m2[g * per:(g + 1) * per, g * per:(g + 1) * per] for g in range(groups)])
    wg = w.reshape(groups, w.shape[0] // groups, per, -1)  # (group, outputs, inputs, kernel)
    return torch.einsum("goik,gij->gojk", wg, blocks).reshape(w.shape)
