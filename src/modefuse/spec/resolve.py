"""From classes of unit variables to a `PermutationSpec`: each class a layer produces and nothing fixes
becomes a group, and where its units sit on each parameter axis becomes a `Layout` (`dims.positions`)."""
from __future__ import annotations

import numpy as np

from .dims import plain, positions
from .permutation_spec import Layout, PermutationSpec
from .units import FIXED
from .walker import Walker


def resolve(w: Walker, aliases: dict[str, list[str]]) -> PermutationSpec:
    """The spec of a finished walk: groups, their layouts on each parameter axis, sizes, contracted axes
    and the nodes that carry each group's units."""
    uv = w.uv
    marked, names = _produced_classes(uv)
    bad: set[int] = set()
    layouts_of = _layouts(w, aliases, marked, bad)
    groups: dict[str, list[tuple[str, int]]] = {}
    layouts: dict[tuple[str, str, int], Layout] = {}
    sizes: dict[str, int] = {}
    contracted: set[tuple[str, int]] = set()
    group_of: dict[int, str] = {}
    for (r, key, a), lay in layouts_of.items():
        if r in bad:
            continue
        if r not in group_of:
            base = names.get(r) or f"units{r}"
            name, k = base, 2
            while name in sizes:
                name, k = f"{base}#{k}", k + 1
            group_of[r] = name
            sizes[name] = uv.size[r]
        g = group_of[r]
        for k in [key] + aliases.get(key, []):
            if k not in w.state_keys:
                continue
            groups.setdefault(g, []).append((k, a))
            if lay != Layout():
                layouts[(g, k, a)] = lay
            if w.params[key][a] in w.contracted:
                contracted.add((k, a))
    unit_nodes: dict[str, list[tuple[str, int]]] = {}
    for node_name, d, v in w.carriers:
        r = uv.find(v)
        if r in group_of and r not in uv.refined:
            unit_nodes.setdefault(group_of[r], []).append((node_name, d))
    groups = {g: axes for g, axes in groups.items() if axes}
    return PermutationSpec(groups, layouts, {g: sizes[g] for g in groups}, contracted=contracted,
                           unit_nodes=unit_nodes)


def _produced_classes(uv) -> tuple[set[int], dict[int, str | None]]:
    """The classes a layer produces (and nothing fixes), and their names; the parts of a produced class
    (a reshape's factors or slices) are produced too, and named after it."""
    classes = uv.classes()
    marked = {r for r, (_, m) in classes.items() if m and r != FIXED}
    names = {r: n for r, (n, _) in classes.items()}
    changed = True
    while changed:
        changed = False
        for r, f in list(uv.refined.items()):
            if uv.find(r) != r:
                continue
            for i, p in enumerate(f.parts):
                q = uv.find(p)
                if q == FIXED:
                    continue
                if r in marked and q not in marked:
                    marked.add(q)
                    changed = True
                if names.get(q) is None and names.get(r) is not None:
                    names[q] = f"{names[r]}.{'f' if f.kind == 'kron' else 's'}{i}"
                    changed = True
    return marked, names


def _layouts(w: Walker, aliases, marked: set[int], bad: set[int]) -> dict[tuple[int, str, int], Layout]:
    """(class, state key, axis) -> where the class's units sit on that parameter axis; a class whose
    positions fit no `Layout` is added to `bad` (left fixed)."""
    uv = w.uv
    where: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    for key, vars_ in w.params.items():
        if key not in w.state_keys and not aliases.get(key):
            continue
        for a, v in enumerate(vars_):
            if v is None:
                continue
            _, labels = positions(uv, plain(uv.size[v], v), bad)
            labels = {r: lab for r, lab in labels.items() if r in marked}
            if labels:
                where[(key, a)] = labels
    layouts_of: dict[tuple[int, str, int], Layout] = {}
    for (key, a), labels in where.items():
        for r, lab in labels.items():
            lay = fit_layout(lab, uv.size[r])
            if lay is None:
                bad.add(r)
            else:
                layouts_of[(r, key, a)] = lay
    return layouts_of


def pinned_notes(w: Walker) -> list[str]:
    """Where units a layer produces were left fixed because an op does not commute with moving them."""
    seen, out = set(), []
    for node_name, why, vs in w.notes:
        if any(w.uv.marked[v] for v in vs) and why not in seen:
            seen.add(why)
            out.append(f"modefuse: some hidden units stay fixed (not permuted) at node {node_name!r}: {why}")
    return out


def fit_layout(lab: np.ndarray, n: int) -> Layout | None:
    """The Layout putting unit c at the positions where `lab` is c, or None if none does."""
    counts = np.bincount(lab[lab >= 0], minlength=n)
    if len(counts) != n or counts.min() != counts.max() or not counts[0]:
        return None
    order = np.argsort(lab, kind="stable")  # positions grouped by unit, ascending within a unit
    pos = order[lab[order] >= 0].reshape(n, counts[0])
    p0 = pos[0]
    block = 1
    while block < len(p0) and p0[block] == p0[0] + block:
        block += 1
    tiles = len(p0) // block
    stride = int(p0[block] - p0[0]) if tiles > 1 else 0
    lay = Layout(int(p0[0]), block, tiles, 0 if stride == n * block else stride)
    if tiles * block != len(p0) or not np.array_equal(lay.positions(n).numpy(), pos):
        return None
    return lay
