"""Weight matching's score terms, kept up to date cheaply.

The score of group g in weight matching is a sum of one term per spec entry (g, tensor k, axis a):
T = R @ X^T, R the reference's units of g on axis a as rows, X the model's, with every other
group's permutation applied to the model's tensor. Coordinate descent asks for T again whenever a
neighbour's permutation changed; after the first sweeps only a few positions change, so:
- other groups' permutations are applied as gathers on a view of the model's tensor (its units first),
  so a term costs one gather and one product, and nothing is copied to be kept;
- when the one axis that changed moved at positions P (fewer than `REFRESH` of them), T is refreshed
  by the low-rank correction R[:, P] @ (X_new[:, P] - X_old[:, P])^T instead of recomputed.
Entries whose axis a also carries another group (attention heads and the order within them) take the
plain path: permute the tensor, then the product.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Mapping

import torch

from ..storage.lazystate import LazyState
from ..spec.permutation_spec import PLAIN, PermutationSpec
from ..spec.transport import axis_index, permute_tensor, unit_rows

REFRESH = 0.35  # a correction over more than this share of an axis costs about as much as recomputing
MAX_REFRESHES = 8  # then recompute, so that rounding cannot pile up
SMALL = 16 * 2**20  # bytes: a model whose terms all fit in this keeps all of them


class ScoreTerms:
    """`terms(g, k, a, perms)`: the score term of entry (g, k, a) under `perms`, from cache where it can.

    `budget`: bytes of terms the cache may hold (least recently used go first; default a quarter of the size
    of the model's state; every term when all of them take less than `SMALL`), so that memory stays bounded
    when terms are large (wide MLPs: n x n each, as large as a layer) and small models recompute nothing.
    """

    def __init__(self, spec: PermutationSpec, ref: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                 budget: int | None = None):
        self.spec, self.ref, self.state, self.axes_of = spec, ref, state, spec.axes_of
        # checkpoints read on access (`LazyState`): nothing is kept, every tensor is read when needed
        self.lazy = isinstance(state, LazyState) or isinstance(ref, LazyState)
        self.shape = state.shapes.__getitem__ if isinstance(state, LazyState) else (lambda k: state[k].shape)
        self.cache: OrderedDict[tuple, tuple[object, torch.Tensor]] = OrderedDict()  # entry -> (computed at, term)
        self.refreshes: dict[tuple, int] = {}
        size = state.nbytes() if isinstance(state, LazyState) else sum(t.numel() * t.element_size()
                                                                         for t in state.values())
        every = sum(4 * spec.sizes[g] ** 2 * len(axes) for g, axes in spec.groups.items())  # all terms' bytes
        self.budget = (every if every <= SMALL else size // 4) if budget is None else budget
        self.held = 0
        # where the products run: the models' device (a GPU when they are there); checkpoints are read on the CPU
        self.device = torch.device("cpu") if isinstance(state, LazyState) else next(iter(state.values())).device
        self.scratch: dict[str, torch.Tensor] = {}
        self.views: dict[tuple, torch.Tensor] = {}  # entry -> (n, lead, *other dims): the model's rows (in memory)
        self.ref_rows: dict[tuple, torch.Tensor] = {}
        self.others: dict[tuple, dict[int, list[tuple[int, str]]]] = {}  # entry -> view axis -> [(axis, group)]
        for g, axes in spec.groups.items():
            for k, a in axes:
                rest = [ax for ax in self.axes_of[k] if ax != (a, g)]
                if any(ax == a for ax, _ in rest):  # another group on the same axis: plain path
                    continue
                by_axis: dict[int, list[tuple[int, str]]] = {}
                for ax, h in rest:
                    by_axis.setdefault(2 + (ax if ax < a else ax - 1), []).append((ax, h))
                self.others[(g, k, a)] = by_axis

    def _ref(self, e) -> torch.Tensor:
        """The reference's units of entry e as rows (n, F); kept when the models are in memory."""
        if e in self.ref_rows:
            return self.ref_rows[e]
        g, k, a = e
        rows = unit_rows(self.ref[k].float(), self.spec, g, k, a)
        if not self.lazy:
            self.ref_rows[e] = rows
        return rows

    def _view(self, e) -> torch.Tensor:
        """The model's tensor of entry e as (n, lead, *other dims), units first (a view where it can be)."""
        if e in self.views:
            return self.views[e]
        g, k, a = e
        n = self.spec.sizes[g]
        t = self.state[k].float()
        cols = list(t.shape[:a] + t.shape[a + 1:])
        if self._plain_axis(e):
            v = t.movedim(a, 0).unsqueeze(1)
        else:  # a layout's tiles x block come first
            v = unit_rows(t, self.spec, g, k, a).reshape(n, -1, *cols)
        if not self.lazy:
            self.views[e] = v
        return v

    def _plain_axis(self, e) -> bool:
        g, k, a = e
        return self.spec.layout(g, k, a) == PLAIN and self.shape(k)[a] == self.spec.sizes[g]

    def score(self, g: str, perms: Mapping[str, torch.Tensor], entries=None) -> torch.Tensor:
        """Group g's score: the sum of its entries' terms (all of them unless `entries` says which), in
        one matrix reused from call to call (valid until the next); a term the cache will not hold goes
        straight into it."""
        n = self.spec.sizes[g]
        acc = self._work("score", (n, n))
        empty = True
        for k, a in self.spec.groups[g] if entries is None else entries:
            t = self(g, k, a, perms, into=acc, add=not empty)
            if t is not None:
                acc.add_(t) if not empty else acc.copy_(t)
            empty = False
        return acc.zero_() if empty else acc

    def __call__(self, g: str, k: str, a: int, perms: Mapping[str, torch.Tensor],
                 into: torch.Tensor | None = None, add: bool = True) -> torch.Tensor | None:
        """The term; or None after writing it to `into` (adding it if `add`) when the cache would not keep it."""
        e = (g, k, a)
        if e not in self.others:
            return self._plain(e, perms)
        index = {d: self._index(k, pairs, perms) for d, pairs in self.others[e].items()}
        if e in self.cache:
            old, term = self.cache[e]
            self.cache.move_to_end(e)
            changed = [d for d in index if not torch.equal(index[d], old[d])]
            if not changed:
                return term
            if len(changed) == 1:
                d = changed[0]
                pos = (index[d] != old[d]).nonzero().flatten()
                if len(pos) <= REFRESH * len(index[d]) and self.refreshes.get(e, 0) < MAX_REFRESHES:
                    self.refreshes[e] = self.refreshes.get(e, 0) + 1
                    term.addmm_(*self._correction(e, d, pos, index, old[d]))
                    self.cache[e] = index, term
                    return term
        x = self._rows_at(e, index).T
        self.refreshes[e] = 0
        r = self._ref(e)
        n = len(r)
        if into is not None and not self._fits(n * n * 4):
            if add:
                into.addmm_(r, x)
            else:
                torch.mm(r, x, out=into)
            return None
        if e in self.cache:  # recomputed in place: no second n x n while the old one is held
            term = torch.mm(r, x, out=self.cache[e][1])
            self.cache[e] = index, term
            return term
        term = r @ x
        self._keep(e, index, term)
        return term

    def _rows_at(self, e, index) -> torch.Tensor:
        """The model's rows of entry e with the other axes gathered by `index`, as an (n, F) matrix.
        Gathers and the move of the unit axis to the front go into scratch buffers: a fresh tensor
        per term costs more in page faults than the copy itself."""
        g, k, a = e
        n = self.spec.sizes[g]
        if not self._plain_axis(e):
            x = self._view(e)
            for d, idx in index.items():
                x = x.index_select(d, idx)
            return x.reshape(n, -1)
        t = self.state[k].float()
        for i, (d, idx) in enumerate(index.items()):
            ax = d - 2 if d - 2 < a else d - 1
            shape = list(t.shape)
            shape[ax] = len(idx)
            t = torch.index_select(t, ax, idx, out=self._work("gather", shape)) if i == 0 else t.index_select(ax, idx)
        if a != 0:
            t = t.movedim(a, 0)
            if t.dim() > 2:  # a matrix's transpose is read as it is by the product; more axes need a copy
                t = self._work("rows", t.shape).copy_(t)
        return t.reshape(n, -1)

    def _work(self, name: str, shape) -> torch.Tensor:
        """A scratch tensor kept from call to call: no allocation (and no heap churn) per term."""
        shape = tuple(shape)
        buf = self.scratch.get(name)
        if buf is None or buf.numel() < math.prod(shape):
            buf = self.scratch[name] = torch.empty(math.prod(shape), device=self.device)
        return buf[:math.prod(shape)].view(shape)

    def _fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def _keep(self, e, at, term) -> None:
        """Cache `term` for entry `e`, dropping the least recently used beyond the budget."""
        if e in self.cache:
            self.held -= self.cache.pop(e)[1].numel() * term.element_size()
        size = term.numel() * term.element_size()
        while self.cache and self.held + size > self.budget:
            self.held -= self.cache.popitem(last=False)[1][1].numel() * term.element_size()
        if self._fits(size):
            self.cache[e] = at, term
            self.held += size

    def _correction(self, e, d, pos, index, old_idx) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors of R[:, P] @ (X_new[:, P] - X_old[:, P])^T over the positions P of view axis d that
        moved (added to the term in place)."""
        x = self._view(e)
        new = x.index_select(d, index[d][pos])
        prev = x.index_select(d, old_idx[pos])
        for d2, idx in index.items():
            if d2 != d:
                new, prev = new.index_select(d2, idx), prev.index_select(d2, idx)
        n = len(x)
        r = self._ref(e).reshape(x.shape).index_select(d, pos)
        return r.reshape(n, -1), (new - prev).reshape(n, -1).T

    def _index(self, k, pairs, perms) -> torch.Tensor:
        """The gather index along one axis of tensor k that applies its groups' permutations in turn."""
        idx = None
        for ax, h in pairs:
            i = axis_index(self.spec, h, k, ax, perms[h], self.shape(k)[ax])
            idx = i if idx is None else idx[i]
        return idx

    def _plain(self, e, perms) -> torch.Tensor:
        g, k, a = e
        at = [perms[h] for ax, h in self.axes_of[k] if (ax, h) != (a, g)]
        if e in self.cache and all(torch.equal(p, q) for p, q in zip(at, self.cache[e][0])):
            self.cache.move_to_end(e)
            return self.cache[e][1]
        others = permute_tensor(self.state[k].float(), k, self.axes_of[k], self.spec, perms, skip={(a, g)})
        term = self._ref(e) @ unit_rows(others, self.spec, g, k, a).T
        self._keep(e, [p.clone() for p in at], term)
        return term
