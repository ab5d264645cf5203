"""Matching groups that share an axis as blocks: attention heads together with the order within them.

A head permutation and the permutation within every head act on the same rows (one moves blocks,
the other the rows inside each block). Coordinate descent over the two alone gets stuck: the heads
are compared while the rows inside them are still scrambled. Here the outer group (the one with
fewer units) is solved knowing the inner ones: the score of pairing head i with head j is the best
matching of their rows, then the inner orders are solved for the chosen heads, and the pair of
steps is kept only if the objective rises (so the descent stays monotone).
"""
from __future__ import annotations

import numpy as np
import torch

from .solvers import assignment
from ..spec.permutation_spec import PermutationSpec


def inner_groups(spec: PermutationSpec, g: str) -> dict[str, list[tuple[str, int]]]:
    """The groups living inside `g`'s units on every axis they touch: {group: its entries}.

    Empty unless, on each axis they share with `g`, the inner groups together cover `g`'s positions
    (Q and K rows under the QK order, V rows under the VO order): then the block step sees every
    term it changes.
    """
    mine = set(spec.groups[g])
    out = {}
    for h, entries in spec.groups.items():
        if h != g and spec.sizes[h] >= spec.sizes[g] and set(entries) <= mine and all(
                _grid(spec, g, h, k, a) is not None for k, a in entries):
            out[h] = list(entries)
    covered: dict[tuple[str, int], set] = {}
    for h, entries in out.items():
        for k, a in entries:
            pos = spec.layout(h, k, a).positions(spec.sizes[h]).ravel().tolist()
            covered.setdefault((k, a), set()).update(pos)
    for (k, a), pos in covered.items():
        if pos != set(spec.layout(g, k, a).positions(spec.sizes[g]).ravel().tolist()):
            return {}
    return out


def _grid(spec, g, h, key, axis) -> np.ndarray | None:
    """`h`'s positions on the axis as a (units of g, units of h, copies) grid, or None if they are not one."""
    pg = spec.layout(g, key, axis).positions(spec.sizes[g]).numpy()
    ph = spec.layout(h, key, axis).positions(spec.sizes[h]).numpy()
    size = int(max(pg.max(), ph.max())) + 1
    outer, inner = np.full(size, -1), np.full(size, -1)
    outer[pg] = np.arange(len(pg))[:, None]
    inner[ph] = np.arange(len(ph))[:, None]
    sel = ph.ravel()
    if (outer[sel] < 0).any():
        return None
    order = np.lexsort((sel, inner[sel], outer[sel]))
    n_g, n_h = len(pg), len(ph)
    if len(sel) % (n_g * n_h) or (np.bincount(outer[sel] * n_h + inner[sel], minlength=n_g * n_h)
                                  != len(sel) // (n_g * n_h)).any():
        return None
    return sel[order].reshape(n_g, n_h, -1)


def pair_scores(spec, g, h, key, axis, ref: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """S[i, j, c, d]: <ref's unit c of g-unit i, model's unit d of g-unit j> over one entry (4-d)."""
    grid = torch.from_numpy(_grid(spec, g, h, key, axis)).to(ref.device)
    r = ref.movedim(axis, 0).reshape(ref.shape[axis], -1)[grid]
    m = model.movedim(axis, 0).reshape(model.shape[axis], -1)[grid]
    return torch.einsum("icrf,jdrf->ijcd", r.float(), m.float())


def block_step(plain: torch.Tensor, scores: dict[str, torch.Tensor], perm_g: torch.Tensor,
               perms_in: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    """One step on an outer group and its inner groups.

    plain: the outer group's score from the entries it holds alone; scores: per inner group, the sum
    of its entries' `pair_scores`. Returns the objective's gain and the new permutations (gain <= 0:
    keep the current ones).
    """
    n = len(perm_g)
    idx = torch.arange(n, device=plain.device)
    total = plain.clone()
    for s in scores.values():
        best = torch.empty(n, n, dtype=s.dtype, device=s.device)
        for i in range(n):
            for j in range(n):
                p = assignment(s[i, j])
                best[i, j] = s[i, j][torch.arange(len(p), device=s.device), p].sum()
        total = total + best
    new_g = assignment(total)
    new_in = {h: assignment(s[idx, new_g].sum(0)) for h, s in scores.items()}

    def value(pg, pin):
        v = plain[idx, pg].sum()
        for h, s in scores.items():
            c = torch.arange(len(pin[h]), device=s.device)
            v = v + s[idx, pg][:, c, pin[h]].sum()
        return float(v)

    return value(new_g, new_in) - value(perm_g, perms_in), new_g, new_in
