"""Transports: one matrix per group, applied to a whole state_dict.

A permutation (a LongTensor `perm`: unit i of the result is unit perm[i] of the
input) is the special case that `permute` applies by indexing; soft couplings
and rectangular maps (fusion, width changes) go through `transport`.
"""
from __future__ import annotations

from typing import Collection, Mapping

import torch

from ..errors import ModefuseError
from .permutation_spec import PLAIN, PermutationSpec

State = dict[str, torch.Tensor]


def permute(state: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> State:
    """`state` with each group's permutation applied on every axis it moves.

    Moving hidden units consistently (a layer's outputs and the next layer's inputs) gives a model that
    computes the same function: applied to the input model's state_dict, an alignment's permutations
    (`Alignment.perms`) give the aligned model's.

    Parameters
    ----------
    state : dict of str to Tensor
        A state_dict; it is not changed.
    spec : PermutationSpec
        Which (key, axis) pairs each group's permutation moves, and where its units sit on them.
    perms : dict of str to LongTensor
        Per group, perm: unit i of the result is unit perm[i] of `state`. Groups without one are left
        as they are.

    Returns
    -------
    dict of str to Tensor
        A new state_dict; tensors the spec does not name are the same objects as in `state`.
    """
    out = dict(state)
    for key, axes in spec.axes_of.items():
        out[key] = permute_tensor(state[key], key, axes, spec, perms)
    return out


def permute_tensor(t: torch.Tensor, key: str, axes: list[tuple[int, str]], spec: PermutationSpec,
                   perms: Mapping[str, torch.Tensor], skip: Collection[tuple[int, str]] = ()) -> torch.Tensor:
    """Tensor `key` with the permutations of its `axes` (from `spec.axes_of`) applied, except those in
    `skip` ((axis, group) pairs). Groups sharing an axis (attention heads and the order within a head)
    commute."""
    for axis, group in axes:
        if group in perms and (axis, group) not in skip:
            t = t.index_select(axis, axis_index(spec, group, key, axis, perms[group], t.shape[axis]))
    return t


def axis_index(spec: PermutationSpec, group: str, key: str, axis: int, perm: torch.Tensor, size: int) -> torch.Tensor:
    """The gather index along one axis that moves `group`'s units by `perm`."""
    pos = spec.layout(group, key, axis).positions(len(perm))
    idx = torch.arange(size)
    idx[pos.flatten()] = pos[perm.cpu()].flatten()
    return idx.to(perm.device)


def unit_rows(tensor: torch.Tensor, spec: PermutationSpec, group: str, key: str, axis: int) -> torch.Tensor:
    """The slice of `tensor` belonging to `group`'s units as a matrix: one row of features per unit."""
    n = spec.sizes[group]
    layout = spec.layout(group, key, axis)
    moved = tensor.movedim(axis, 0)
    if layout == PLAIN and tensor.shape[axis] == n:
        return moved.reshape(n, -1)
    return moved[layout.positions(n).to(tensor.device).flatten()].reshape(n, -1)


def transport(state: Mapping[str, torch.Tensor], spec: PermutationSpec, couplings: Mapping[str, torch.Tensor]) -> State:
    """`state` mapped into a target basis by one coupling `pi` (n_target x n_source, mass 1) per group.

    Axes holding a group's units get n_target * pi: each target unit is the barycentric average of
    the source units coupled to it. Axes contracting them (a layer's inputs) get n_source * pi: each
    source input's weight is shared among the target inputs coupled to it, so the layer's output is
    unchanged when pi is a permutation or splits each unit into copies (a wider target). Scaling that
    side by n_target instead (the WB paper's factor) is function-preserving only when the widths are
    equal: splitting into copies would multiply the layer's output by n_target / n_source.
    """
    perms = {g: as_permutation(pi) for g, pi in couplings.items()}
    out = dict(state)
    for key, axes in spec.axes_of.items():
        out[key] = transport_tensor(state[key], key, axes, spec, couplings, perms)
    return out


def transport_tensor(t: torch.Tensor, key: str, axes: list[tuple[int, str]], spec: PermutationSpec,
                     couplings: Mapping[str, torch.Tensor],
                     perms: Mapping[str, torch.Tensor | None] | None = None) -> torch.Tensor:
    """Tensor `key` with the coupling of each of its `axes` (from `spec.axes_of`) applied, as `transport` does.

    Axes whose group has no coupling are left alone; `perms` caches `as_permutation` of the couplings.
    """
    for axis, group in axes:
        pi = couplings.get(group)
        if pi is None:
            continue
        perm = perms[group] if perms is not None and group in perms else as_permutation(pi)
        if perm is not None:  # a permutation: both scalings are 1, so gather instead of multiply
            if not torch.equal(perm, torch.arange(len(perm), device=perm.device)):
                t = t.index_select(axis, axis_index(spec, group, key, axis, perm.to(t.device), t.shape[axis]))
            continue
        pi = pi.to(t.device, t.dtype if t.is_floating_point() else torch.float32)
        n_t, n_s = pi.shape
        scale = n_s if spec.is_input(key, axis, t.dim()) else n_t
        t = apply_along(t, axis, scale * pi, spec.layout(group, key, axis), key)
    return t


def as_permutation(pi: torch.Tensor) -> torch.Tensor | None:
    """The permutation `perm` if coupling `pi` is one (pi[i, perm[i]] = 1/n, zero elsewhere), else None."""
    n, m = pi.shape
    if n != m:
        return None
    nz = pi > 0.5 / n
    if not (nz.sum(1) == 1).all() or not (nz.sum(0) == 1).all() or (pi[~nz].abs() > 1e-6 / n).any():
        return None
    return nz.float().argmax(1)


def apply_along(t: torch.Tensor, axis: int, m: torch.Tensor, layout, key: str = "") -> torch.Tensor:
    """Multiply the units of `axis` (laid out by `layout`) by matrix m (n_target x n_source)."""
    n_t, n_s = m.shape
    size = t.shape[axis]
    contiguous = layout.offset == 0 and layout.tiles * layout.block * n_s == size and layout.stride in (
        0, n_s * layout.block)
    if not contiguous and n_t == n_s:  # the units share the axis with others (a concatenation): mix them in place
        pos = layout.positions(n_s).to(t.device).flatten()
        x = t.movedim(axis, 0)
        units = x[pos].reshape(n_s, -1).to(m.dtype)
        out = x.clone()
        out[pos] = (m @ units).reshape(len(pos), *x.shape[1:]).to(t.dtype)
        return out.movedim(0, axis)
    if not contiguous:
        raise ModefuseError(f"axis {axis} of {key!r} holds units of several groups (a concatenation?); fusion "
                            f"into another width needs each axis to belong to one group")
    x = t.movedim(axis, 0)
    rest = x.shape[1:]
    y = torch.matmul(m, x.reshape(layout.tiles, n_s, -1).to(m.dtype)).to(t.dtype)  # (tiles, n_t, block*rest)
    return y.reshape(layout.tiles * n_t * layout.block, *rest).movedim(0, axis)


def invert(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm), device=perm.device)
    return inv


def moved_units(perms: Mapping[str, torch.Tensor]) -> int:
    """How many units the permutations move (positions not mapped to themselves), over all groups."""
    return sum(int((p != torch.arange(len(p), device=p.device)).sum()) for p in perms.values())


def random_perms(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random permutation for every group (for tests and planted-permutation checks)."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(n, generator=g) for name, n in spec.sizes.items()}
