"""What each axis of a traced tensor holds, as a mixed radix of unit variables.

An axis is a tuple of parts, outer to inner, whose sizes multiply to the axis size: `Atom(var,
size)` (`var` None for what is not hidden units: batch, positions, a fixed axis) or `Cat(pieces)`,
axes laid side by side. Reshapes are then exact for any view: flatten the axes into one tuple of
parts and cut it at the new sizes (`reshape`), refining a variable as a product where a cut falls
inside it. Two axes that must carry the same units are joined part by part (`unify`). `positions`
turns an axis back into where each variable's units sit on it. Nothing here knows about torch.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Union

import numpy as np

from .units import UnitVars


class Atom(NamedTuple):
    var: int | None
    size: int


class Cat(NamedTuple):
    pieces: tuple[tuple, ...]  # each a tuple of parts (an axis of its own)

    @property
    def size(self) -> int:
        return sum(axis_size(p) for p in self.pieces)


Part = Union[Atom, Cat]
Axis = tuple  # tuple[Part, ...]


def axis_size(axis: Axis) -> int:
    return math.prod(p.size for p in axis)


def plain(size: int, var: int | None = None) -> Axis:
    """An axis of one atom (size 1 axes have no parts)."""
    return () if size == 1 else (Atom(var, int(size)),)


def variables(axis: Axis) -> list[int]:
    out = []
    for p in axis:
        if isinstance(p, Cat):
            for piece in p.pieces:
                out += variables(piece)
        elif p.var is not None:
            out.append(p.var)
    return out


def has_units(axis: Axis) -> bool:
    return bool(variables(axis))


def fixed(uv: UnitVars, axis: Axis) -> Axis:
    """`axis` with all its variables fixed, as one plain atom."""
    for v in variables(axis):
        uv.fix(v)
    return plain(axis_size(axis))


def _split_atom(uv: UnitVars, a: Atom, outer: int) -> tuple[Atom, Atom]:
    inner = a.size // outer
    if a.var is None:
        return Atom(None, outer), Atom(None, inner)
    parts = uv.refine(a.var, "kron", (outer, inner))
    if parts is None:
        return Atom(None, outer), Atom(None, inner)
    return Atom(parts[0], outer), Atom(parts[1], inner)


def cut(uv: UnitVars, parts: Axis, sizes: tuple[int, ...]) -> list[Axis] | None:
    """`parts` (outer to inner) cut into consecutive axes of `sizes`; None when a cut cannot be made
    (a size that does not divide a part, or a cut inside a concatenation)."""
    parts = [p for p in parts if p.size != 1]
    out: list[Axis] = []
    i = 0
    for s in sizes:
        axis: list[Part] = []
        need = s
        while need > 1:
            if i >= len(parts):
                return None
            p = parts[i]
            if p.size <= need:
                if need % p.size:
                    return None
                axis.append(p)
                need //= p.size
                i += 1
            elif isinstance(p, Atom) and p.size % need == 0:
                head, tail = _split_atom(uv, p, need)
                axis.append(head)
                parts[i] = tail
                need = 1
            else:
                return None
        out.append(tuple(axis))
    return out if i == len(parts) else None


def reshape(uv: UnitVars, axes: tuple[Axis, ...], shape: tuple[int, ...]) -> tuple[Axis, ...]:
    """The axes of a view of a tensor with `axes` as `shape` (row-major, as torch's view and reshape).

    Where the parts cannot be cut at the new sizes, their variables are fixed.
    """
    flat = tuple(p for a in axes for p in a)
    out = cut(uv, flat, tuple(shape))
    if out is None:
        out = cut(uv, fixed(uv, flat), tuple(shape))
    return tuple(out)


def common_sizes(a: Axis, b: Axis) -> list[int] | None:
    """The coarsest sizes both axes can be cut into (so that their parts line up), or None."""
    x, y = [p.size for p in a if p.size != 1], [p.size for p in b if p.size != 1]
    out, i, j = [], 0, 0
    while i < len(x) and j < len(y):
        if x[i] == y[j]:
            out.append(x[i])
            i, j = i + 1, j + 1
        elif x[i] % y[j] == 0:
            out.append(y[j])
            x[i] //= y[j]
            j += 1
        elif y[j] % x[i] == 0:
            out.append(x[i])
            y[j] //= x[i]
            i += 1
        else:
            return None
    return out if i == len(x) and j == len(y) else None


def unify(uv: UnitVars, a: Axis, b: Axis) -> bool:
    """Join the units of two axes of the same size that must carry the same units.

    Where one axis holds no units at a place where the other does, those are fixed. False when the
    sizes or the structures cannot be matched (the caller fixes both or names the node).
    """
    if axis_size(a) != axis_size(b):
        return False
    sizes = common_sizes(a, b)
    ca = cut(uv, a, tuple(sizes)) if sizes is not None else None
    cb = cut(uv, b, tuple(sizes)) if sizes is not None else None
    if ca is None or cb is None:
        fixed(uv, a)
        fixed(uv, b)
        return True
    for pa, pb in zip(ca, cb):
        if not _unify_part(uv, pa[0] if pa else Atom(None, 1), pb[0] if pb else Atom(None, 1)):
            return False
    return True


def _unify_part(uv: UnitVars, p: Part, q: Part) -> bool:
    if isinstance(q, Cat) and not isinstance(p, Cat):
        p, q = q, p
    if isinstance(p, Cat):
        sizes = tuple(axis_size(x) for x in p.pieces)
        if isinstance(q, Atom) and q.var is not None:  # a layer reading a concatenation: its input axis
            parts = uv.refine(q.var, "cat", sizes)      # is the concatenation of the pieces' units
            if parts is not None:
                q = Cat(tuple(plain(n, v) for n, v in zip(sizes, parts)))
        if isinstance(q, Cat) and [axis_size(x) for x in q.pieces] == list(sizes):
            return all(unify(uv, x, y) for x, y in zip(p.pieces, q.pieces))
        fixed(uv, (p,))
        fixed(uv, (q,))
        return True
    if p.var is None or q.var is None:
        for v in (p.var, q.var):
            if v is not None:
                uv.fix(v)
        return True
    return uv.union(p.var, q.var)


def positions(uv: UnitVars, axis: Axis, bad: set[int]) -> tuple[int, dict[int, np.ndarray]]:
    """The axis size and, per leaf class (root) on it, the unit index at each position (-1: none).

    Refined variables are expanded into their parts. A class met twice on one axis cannot be laid
    out by one permutation of its units: it goes into `bad` (the caller fixes it).
    """
    size = axis_size(axis)
    out: dict[int, np.ndarray] = {}
    inner = size
    for p in axis:
        inner //= p.size
        sub_size, sub = _part_positions(uv, p, bad)
        idx = (np.arange(size) // inner) % sub_size
        for r, lab in sub.items():
            if r in out:
                bad.add(r)
            out[r] = lab[idx]
    return size, out


def _part_positions(uv: UnitVars, p: Part, bad: set[int]) -> tuple[int, dict[int, np.ndarray]]:
    if isinstance(p, Cat):
        out: dict[int, np.ndarray] = {}
        offset = 0
        for piece in p.pieces:
            n, sub = positions(uv, piece, bad)
            for r, lab in sub.items():  # a class in several pieces: its units tile them (Q, K, V heads)
                arr = out.setdefault(r, np.full(p.size, -1))
                arr[offset:offset + n] = lab
            offset += n
        return p.size, out
    if p.var is None:
        return p.size, {}
    r = uv.find(p.var)
    if r == 0:
        return p.size, {}
    f = uv.refined.get(r)
    if f is None:
        return p.size, {r: np.arange(p.size)}
    sub = tuple(Atom(q, uv.size[q]) for q in f.parts)
    return positions(uv, sub if f.kind == "kron" else (Cat(tuple((a,) for a in sub)),), bad)
