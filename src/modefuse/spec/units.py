"""Unit variables: which axes of which tensors carry the same hidden units, by union-find.

Spec inference gives every parameter axis a variable and joins the variables that must be
permuted together (a layer's output rows and the next layer's input columns, the two sides of a
residual addition). A variable may be *refined* into parts: a reshape that splits 256 features
into 4 heads of 64 makes it the product `kron(heads, head_dim)`; a split into Q, K and V makes it
the concatenation of three variables. Joining a refined variable with another refines both alike.
`FIXED` is the variable of everything that must not move (inputs, outputs, what no rule can follow);
joining with it fixes, and fixing a refined variable fixes its parts.
"""
from __future__ import annotations

from typing import NamedTuple

FIXED = 0


class Refinement(NamedTuple):
    """A variable as a product (`kron`: outer to inner) or a concatenation (`cat`) of parts."""

    kind: str
    parts: tuple[int, ...]


class UnitVars:
    def __init__(self):
        self.parent = [FIXED]
        self.size = [0]
        self.names: list[str | None] = [None]
        self.marked = [False]  # a layer produces these units: a class with a marked member is a group
        self.refined: dict[int, Refinement] = {}

    def new(self, size: int, name: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.names.append(name)
        self.marked.append(False)
        return len(self.parent) - 1

    def mark(self, v: int, name: str) -> None:
        """`v` holds the hidden units a layer produces; `name` names its group."""
        self.marked[v] = True
        self.names[v] = name

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> bool:
        """Join `a` and `b`; False when their sizes differ (the caller names the node)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if FIXED in (ra, rb):
            self._fix_root(rb if ra == FIXED else ra)
            return True
        if self.size[ra] != self.size[rb]:
            return False
        fa, fb = self.refined.get(ra), self.refined.get(rb)
        lo, hi = sorted((ra, rb))  # the earliest variable stays the root
        self.parent[hi] = lo
        if fa is None or fb is None:  # the class takes the refinement of the one that has one
            self.refined.pop(hi, None)
            if fa or fb:
                self.refined[lo] = fa or fb
            return True
        self.refined.pop(hi, None)
        self.refined[lo] = fa if lo == ra else fb
        if fa.kind != fb.kind or [self.size[p] for p in fa.parts] != [self.size[p] for p in fb.parts]:
            self._fix_root(lo)  # refined two different ways: no permutation respects both
            return True
        return all(self.union(p, q) for p, q in zip(fa.parts, fb.parts))

    def fix(self, v: int) -> None:
        self.union(v, FIXED)

    def _fix_root(self, r: int) -> None:
        f = self.refined.pop(r, None)
        self.parent[r] = FIXED
        if f is not None:
            for p in f.parts:
                self.fix(p)

    def refine(self, v: int, kind: str, sizes: tuple[int, ...]) -> tuple[int, ...] | None:
        """The parts of `v` as `kind` ("kron" or "cat") of `sizes`: made now, or the ones it already has.

        None when `v` is fixed; when it was already refined another way it is fixed (and None returned).
        """
        r = self.find(v)
        if r == FIXED:
            return None
        f = self.refined.get(r)
        if f is None:
            parts = tuple(self.new(s) for s in sizes)
            self.refined[r] = Refinement(kind, parts)
            return parts
        if f.kind == kind and tuple(self.size[p] for p in f.parts) == tuple(sizes):
            return f.parts
        self._fix_root(r)
        return None

    def classes(self) -> dict[int, tuple[str | None, bool]]:
        """Per class root: its name (the earliest named marked member, else the earliest named one) and
        whether a layer produces its units (some member is marked)."""
        out: dict[int, tuple[str | None, bool]] = {}
        for v in range(1, len(self.parent)):
            r = self.find(v)
            name, marked = out.get(r, (None, False))
            if self.names[v] is not None and (name is None or self.marked[v] and not marked):
                name = self.names[v]
            out[r] = (name, marked or self.marked[v])
        return out
