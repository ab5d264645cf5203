"""Permutation specs: which axes of which tensors share one hidden-unit order.

A `PermutationSpec` is plain data, as in Git Re-Basin: `groups` maps a group
name to the `(state_dict key, axis)` pairs its permutation moves. Where a
group's units do not sit one per position on an axis, `layouts` says how they
do: a channel flattened into H*W features of a Linear (`block`), an LSTM's four
gate chunks (`tiles`, `stride`), a concatenation (`offset`). Algorithms only
read this data; `infer_spec` builds it from any module through `torch.export`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Mapping, NamedTuple, Sequence

import torch

from ..errors import ModefuseError


class Layout(NamedTuple):
    """Where a group's units sit on one tensor axis: position of unit c, copy j, chunk g is
    offset + g * stride + c * block + j (stride 0 means units * block)."""

    offset: int = 0
    block: int = 1
    tiles: int = 1
    stride: int = 0

    def positions(self, n: int) -> torch.Tensor:
        """(n, tiles * block) axis positions of each of the `n` units."""
        stride = self.stride or n * self.block
        c = torch.arange(n).view(n, 1, 1) * self.block
        g = torch.arange(self.tiles).view(1, self.tiles, 1) * stride
        j = torch.arange(self.block).view(1, 1, self.block)
        return (self.offset + c + g + j).reshape(n, self.tiles * self.block)


PLAIN = Layout()
SPEC_FORMAT = "modefuse-spec/1"


@dataclass(frozen=True)
class PermutationSpec:
    """Which axes of which state_dict tensors share one hidden-unit order: the groups a permutation moves.

    Plain data, as in Git Re-Basin (Ainsworth et al. 2022): every alignment and fusion method reads it,
    so a model `infer_spec` cannot trace is handled by writing its spec by hand. Frozen data: built once
    (by `infer_spec`, `from_axes`, `from_json` or by hand) and never changed; `check(state)` returns a
    checked spec with the sizes filled in. The graph a spec was inferred from is kept apart
    (`modefuse.spec.trace.trace_of(spec)`).

    Attributes
    ----------
    groups : dict of str to tuple of (str, int)
        Group name -> the (state_dict key, axis) pairs its permutation moves.
    layouts : dict of (str, str, int) to Layout
        (group, key, axis) -> where the group's units sit on that axis, where not one per position:
        a channel flattened into H*W features (`block`), an LSTM's gate chunks (`tiles`, `stride`), a
        concatenation (`offset`).
    sizes : dict of str to int
        Units per group (filled in by `check`).
    contracted : frozenset of (str, int) or None
        The entries where the group's units are contracted (a layer's input axis) rather than produced;
        fusion maps them with the source width's scale. None: axis >= 1 of a tensor of 2+ dims.
    unit_nodes : dict of str to tuple of (str, int)
        Inferred specs only: per group, the graph nodes whose outputs carry its units (node, axis),
        which activation-based alignment reads (names only; not compared by ==).
    """

    groups: Mapping[str, Sequence[tuple[str, int]]]
    layouts: Mapping[tuple[str, str, int], Layout] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    # entries where the group's units are contracted (a layer's input axis) rather than produced;
    # fusion maps them with the source width's scale. None: axis >= 1 of a tensor of 2+ dims
    contracted: frozenset[tuple[str, int]] | None = None
    # inferred specs also name, per group, the graph nodes whose outputs carry its units (node, axis):
    # activation-based alignment reads them (names only: the graph itself is not part of the spec)
    unit_nodes: Mapping[str, Sequence[tuple[str, int]]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        put = object.__setattr__.__get__(self)
        put("groups", {str(g): tuple((str(k), int(a)) for k, a in axes) for g, axes in self.groups.items()})
        put("layouts", {(str(g), str(k), int(a)): Layout(*v) for (g, k, a), v in self.layouts.items()})
        put("sizes", {str(g): int(n) for g, n in self.sizes.items()})
        put("contracted", None if self.contracted is None else frozenset((str(k), int(a)) for k, a in self.contracted))
        put("unit_nodes", {str(g): tuple((str(n), int(a)) for n, a in nodes) for g, nodes in self.unit_nodes.items()})

    @classmethod
    def from_axes(cls, axes: Mapping[str, Sequence[str | None]], layouts: Mapping | None = None,
                  sizes: Mapping[str, int] | None = None) -> "PermutationSpec":
        """A hand-written spec from each tensor's axes, as Git Re-Basin's `axes_to_perm`: for every
        state_dict key, one group name (or None: not permuted) per axis. E.g. for a two-layer MLP
        `{"fc1.weight": ("h", None), "fc1.bias": ("h",), "fc2.weight": (None, "h")}`.

        Parameters
        ----------
        axes : dict of str to sequence of (str or None)
            State_dict key -> one group name or None per axis; keys not named are not permuted.
        layouts : dict, optional
            (group, key, axis) -> `Layout`, where the units do not sit one per position.
        sizes : dict of str to int, optional
            Units per group (else `check` reads them off the tensors).

        Returns
        -------
        PermutationSpec
            The spec, not yet checked against a model.
        """
        groups: dict[str, list[tuple[str, int]]] = {}
        for key, names in axes.items():
            for a, g in enumerate(names):
                if g is not None:
                    groups.setdefault(g, []).append((key, a))
        return cls(groups, layouts or {}, sizes or {})

    def layout(self, group: str, key: str, axis: int) -> Layout:
        return self.layouts.get((group, key, axis), PLAIN)

    def is_input(self, key: str, axis: int, ndim: int) -> bool:
        """Whether `axis` of tensor `key` contracts units (a layer's input) rather than holding them."""
        if self.contracted is not None:
            return (key, axis) in self.contracted
        return axis >= 1 and ndim >= 2

    @cached_property
    def axes_of(self) -> dict[str, list[tuple[int, str]]]:
        """The inverse map: state_dict key -> [(axis, group)] (computed once)."""
        inv: dict[str, list[tuple[int, str]]] = {}
        for g, axes in self.groups.items():
            for k, a in axes:
                inv.setdefault(k, []).append((a, g))
        return inv

    def check(self, state: Mapping[str, torch.Tensor]) -> "PermutationSpec":
        """This spec checked against `state`, with the sizes it does not give read off the tensors (a new
        spec where sizes were missing); raises naming the first bad entry.

        Parameters
        ----------
        state : dict of str to Tensor
            A model's state_dict.

        Returns
        -------
        PermutationSpec
            This spec if it already gave every size, else a copy with the sizes filled in.

        Raises
        ------
        ModefuseError
            A named tensor or axis is missing, a group's size cannot be read off a tensor, or a layout
            does not fit its axis.
        """
        sizes = dict(self.sizes)
        for g, axes in self.groups.items():
            for k, a in axes:
                if k not in state:
                    raise ModefuseError(f"permutation spec group {g!r} names tensor {k!r}, which the model "
                                        f"does not have")
                if not 0 <= a < state[k].dim():
                    raise ModefuseError(f"spec group {g!r}: tensor {k!r} has no axis {a} "
                                        f"(shape {tuple(state[k].shape)})")
            if g not in sizes:
                plain = [state[k].shape[a] for k, a in axes if self.layout(g, k, a) == PLAIN]
                if not plain:
                    raise ModefuseError(f"spec group {g!r}: give its number of units in sizes= (every "
                                        f"entry has a layout, so it cannot be read off a tensor)")
                sizes[g] = int(plain[0])
            n = sizes[g]
            for k, a in axes:
                lay, size = self.layout(g, k, a), state[k].shape[a]
                if int(lay.positions(n).max()) >= size:
                    raise ModefuseError(f"spec group {g!r} has {n} units but axis {a} of {k!r} (size {size}, "
                                        f"layout {tuple(lay)}) does not fit them")
        return self if sizes == self.sizes else replace(self, sizes=sizes)

    def to_json(self) -> str:
        """The spec as JSON text (the trace it was read from is left out); `from_json` reads it back.

        Returns
        -------
        str
            The format `modefuse align --spec FILE` reads.
        """
        return json.dumps({
            "format": SPEC_FORMAT,
            "groups": {g: [[k, a] for k, a in axes] for g, axes in self.groups.items()},
            "layouts": [[g, k, a, list(lay)] for (g, k, a), lay in self.layouts.items()],
            "sizes": self.sizes,
            "contracted": None if self.contracted is None else sorted([k, a] for k, a in self.contracted),
            "unit_nodes": {g: [[n, a] for n, a in nodes] for g, nodes in self.unit_nodes.items()},
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PermutationSpec":
        """The spec written by `to_json` (or by hand in its format); raises naming what is malformed.

        Parameters
        ----------
        text : str
            JSON text in the format "modefuse-spec/1".

        Returns
        -------
        PermutationSpec
            The spec, not yet checked against a model.
        """
        try:
            d = json.loads(text)
            if d.get("format") != SPEC_FORMAT:
                raise ValueError(f"format is {d.get('format')!r}, expected {SPEC_FORMAT!r}")
            contracted = d.get("contracted")
            return cls({g: [(k, a) for k, a in axes] for g, axes in d["groups"].items()},
                       {(g, k, a): Layout(*lay) for g, k, a, lay in d.get("layouts", [])},
                       {g: int(n) for g, n in d.get("sizes", {}).items()},
                       None if contracted is None else {(k, a) for k, a in contracted},
                       {g: [(n, a) for n, a in nodes] for g, nodes in d.get("unit_nodes", {}).items()})
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ModefuseError(f"not a modefuse permutation spec: {type(e).__name__}: {e}; write one with "
                                f"spec.to_json()") from None

    def __repr__(self) -> str:
        lines = [f"PermutationSpec({len(self.groups)} groups)"]
        for g, axes in self.groups.items():
            n = self.sizes.get(g, "?")
            lines.append(f"  {g} [{n}]: " + ", ".join(f"{k}:{a}" for k, a in axes))
        return "\n".join(lines)
