"""Transports: one matrix per group, applied to a whole state_dict.

A permutation (a LongTensor `perm`: unit i of the result is unit perm[i] of the
input) is the special case that `permute` applies by indexing; soft couplings
and rectangular maps (fusion, width changes) go through `transport`.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .spec import PLAIN, PermutationSpec

State = dict[str, torch.Tensor]


def permute(state: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Mapping[str, torch.Tensor],
            skip: tuple[str, int] | None = None) -> State:
    """`state` with each group's permutation applied on every axis it moves (except `skip`=(key, axis))."""
    out = dict(state)
    for key, axes in spec.axes_of.items():
        out[key] = permute_tensor(state[key], key, axes, spec, perms, skip[1] if skip and skip[0] == key else None)
    return out


def permute_tensor(t: torch.Tensor, key: str, axes: list[tuple[int, str]], spec: PermutationSpec,
                   perms: Mapping[str, torch.Tensor], skip_axis: int | None = None) -> torch.Tensor:
    """Tensor `key` with the permutations of its `axes` (from `spec.axes_of`) applied, `skip_axis` left alone."""
    for axis, group in axes:
        if group in perms and axis != skip_axis:
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


def invert(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm), device=perm.device)
    return inv


def random_perms(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random permutation for every group (for tests and planted-permutation checks)."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(n, generator=g) for name, n in spec.sizes.items()}
