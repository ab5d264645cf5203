"""Statistics of hidden units on data, read at named nodes of a model's exported graph.

Activation matching needs the cross-correlation of two models' units;
covariance-weighted weight matching needs the second moment of each layer's
inputs; REPAIR needs each unit's mean and std. All stream over batches
(`tapped_values`), so memory does not grow with the data. RegMean needs the Gram
matrix of each layer's inputs (`input_grams`).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import nn

from ..zoo.batching import batches, first_inputs, on_device, rows
from ..errors import ModefuseError
from ..spec.infer import infer_spec
from ..spec.trace import trace_of
from ..spec.permutation_spec import PermutationSpec
from ..zoo.models import example_input as zoo_example_input


def as_samples(t: torch.Tensor, axis: int | tuple[int, ...]) -> torch.Tensor:
    """(samples, units): every position other than the unit axis is a sample (conv: space; RNN: steps).
    Several axes (attention: heads, then the order within them) make one unit axis, the first outermost."""
    axes = tuple(a % t.dim() for a in ((axis,) if isinstance(axis, int) else axis))
    units = math.prod(t.shape[a] for a in axes)
    return t.movedim(axes, tuple(range(t.dim() - len(axes), t.dim()))).reshape(-1, units).double()


class CrossMoments:
    """Running sums for the correlation between the units of two models.

    The sums are of values less their first batch's mean (a shift, added back to the means): units whose
    mean is large against their spread (exp(dt * A) in a state-space layer) keep their correlations to
    full precision, where raw second moments would cancel.
    """

    def __init__(self):
        self.n = 0
        self.sa = self.sb = self.saa = self.sbb = self.sab = 0.0
        self.shift_a = self.shift_b = None

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.shift_a is None:
            self.shift_a, self.shift_b = a.mean(0), b.mean(0)
        a, b = a - self.shift_a, b - self.shift_b
        self.n += len(a)
        self.sa = self.sa + a.sum(0)
        self.sb = self.sb + b.sum(0)
        self.saa = self.saa + (a * a).sum(0)
        self.sbb = self.sbb + (b * b).sum(0)
        self.sab = self.sab + a.T @ b

    def _spread(self, s, ss, rel_eps: float):
        """(shifted mean, std, whether constant) of one side's units: constant when the std is below rel_eps
        times the largest (a dead ReLU, a fixed parameter read as a unit)."""
        mean = s / self.n
        std = (ss / self.n - mean ** 2).clamp_min(0).sqrt()
        return mean, std, std <= rel_eps * std.max()

    def constant(self, rel_eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, whether constant) of each unit of the first side."""
        mean, _, const = self._spread(self.sa, self.saa, rel_eps)
        return self.shift_a + mean, const

    def correlation(self, rel_eps: float = 1e-6) -> torch.Tensor:
        """Pearson correlations; a unit constant on the data (`_spread`: a dead ReLU) correlates with
        nothing (0), whatever the scale of the activations."""
        ma, sa, ca = self._spread(self.sa, self.saa, rel_eps)
        mb, sb, cb = self._spread(self.sb, self.sbb, rel_eps)
        cov = self.sab / self.n - ma[:, None] * mb[None, :]
        sa = torch.where(ca, torch.full_like(sa, float("inf")), sa)
        sb = torch.where(cb, torch.full_like(sb, float("inf")), sb)
        return cov / (sa[:, None] * sb[None, :])


@torch.no_grad()
def tapped_values(models: list[nn.Module], trace, names, data, limit: int = 5000,
                  batch_size: int = 500) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Per batch of `data`, for each model: {node name: its value} at the named nodes of the models'
    exported graph (`trace`: the `trace.Trace`, `trace.trace_of(spec)`)."""
    names = sorted(set(names))
    taps: dict[tuple[int, int], object] = {}
    device = next(models[0].parameters()).device
    for x, _ in batches(data, batch_size, device=device, limit=limit):
        out = []
        for i, m in enumerate(models):
            n = rows(x)
            if (i, n) not in taps:
                taps[(i, n)] = trace.tap(m, names, n)
            out.append({k: v.detach() for k, v in zip(names, taps[(i, n)](x))})  # a node may be a parameter
        yield out


def tapped_samples(models: list[nn.Module], trace, points, data, limit: int = 5000,
                   batch_size: int = 500) -> Iterator[list[dict[tuple[str, int], torch.Tensor]]]:
    """Per batch of `data`, for each model: {(node, axis): (samples, units)} at `points`, (node name,
    unit axis) pairs. A node may be read at several axes (attention: heads and the order within them)."""
    points = sorted(set(points), key=str)  # an axis may be a tuple (several axes read as one)
    for values in tapped_values(models, trace, {n for n, _ in points}, data, limit, batch_size):
        yield [{(n, ax): as_samples(v[n], ax) for n, ax in points} for v in values]


def _points(taps: dict[str, list[tuple[str, int]]]) -> set[tuple[str, int]]:
    return {(n, ax) for nodes in taps.values() for n, ax in nodes}


TIE_BREAK = 1e-6  # weight of the other nodes carrying a group: they only order units dead on the data


def cross_moments(ref: nn.Module, model: nn.Module, trace, points, data, limit: int = 5000,
                  batch_size: int = 500) -> dict:
    """Running moments between the two models' units at every point, in one pass over `data`."""
    points = set(points)
    stats = {p: CrossMoments() for p in points}
    for a, b in tapped_samples([ref, model], trace, points, data, limit, batch_size):
        for p in points:
            stats[p].update(a[p], b[p])
    return stats


def unit_correlations(stats: dict, trace, taps: dict[str, list[tuple[str, int]]],
                      own_nodes: bool = False) -> dict[str, torch.Tensor]:
    """Per group, the correlation matrix (ref units x model units) where the next layers read the units.

    Tatro et al. (2020) correlate a layer's outputs after the nonlinearity, which is what the next layer
    reads: the group's nodes that are a linear or convolution layer's input (summed when several are).
    The group's other nodes (pre-activations, normalized copies) add TIE_BREAK times their correlation,
    which only orders units the data never moves (dead ReLUs, whose correlations are all zero). A group
    no layer reads (recurrent states) sums every node that carries it. `stats`: `cross_moments` at the
    points of `taps`. `own_nodes`: only the nodes that carry no other group's units where a group has such
    nodes (elsewhere the other group's order differs between models, so their samples do not line up:
    unlike units within one model then correlate better than a unit and its twin in another).
    """
    carriers: dict[str, set[str]] = {}
    for g, nodes in taps.items():
        for n, _ in nodes:
            carriers.setdefault(n, set()).add(g)
    out = {}
    for g, nodes in taps.items():
        if own_nodes:
            nodes = [p for p in nodes if carriers[p[0]] == {g}] or list(nodes)
        if not nodes:
            continue
        main = read_points(trace, nodes)
        out[g] = sum(stats[p].correlation() for p in main) + TIE_BREAK * sum(
            (stats[p].correlation() for p in nodes if p not in main), torch.zeros(()))
    return out


def read_points(trace, nodes: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The points of a group where the next layers read its units (a linear or convolution layer's input),
    or all of them if no layer reads them (recurrent states)."""
    return [p for p in nodes if p[0] in trace.read_nodes] or list(nodes)


def joint_points(taps: dict[str, list[tuple[str, int]]], outer: str, inner: str) -> list:
    """The points reading both groups' units as one axis, outer first (attention: heads, then the order
    within them): the nodes that carry both."""
    outer_axis = dict(taps.get(outer, []))
    return [(n, (outer_axis[n], ax)) for n, ax in taps.get(inner, []) if n in outer_axis]


def block_correlations(stats: dict, joint: list, sizes: tuple[int, int]) -> torch.Tensor:
    """S[i, j, c, d]: the correlation of unit c inside outer unit i of the reference with unit d inside outer
    unit j of the model (attention: head i's dimension c), summed over the `joint` points (`joint_points`,
    read by `cross_moments`). `sizes`: (outer units, inner units)."""
    n, m = sizes
    return sum(stats[p].correlation() for p in joint).reshape(n, m, n, m).permute(0, 2, 1, 3)


def unit_activations(model: nn.Module, trace, taps: dict[str, list[tuple[str, int]]], data,
                     limit: int = 500, max_features: int = 4096) -> dict[str, torch.Tensor]:
    """Per group, each unit's activations on data as a feature row: (units, samples), float32.

    Every tapped node of the group adds its samples (conv positions and time steps count as samples);
    at most `max_features` samples per node are kept, at a fixed stride (the same for every model).
    """
    points = _points(taps)
    parts: dict[tuple[str, int], list[torch.Tensor]] = {p: [] for p in points}
    batch_size = 100
    n_batches = -(-limit // batch_size)
    for (samples,) in tapped_samples([model], trace, points, data, limit, batch_size):
        for p, v in samples.items():
            step = max(1, -(-len(v) * n_batches // max_features))
            parts[p].append(v[::step].float())
    return {g: torch.cat([torch.cat(parts[(n, ax)])[:max_features].T for n, ax in nodes], 1)
            for g, nodes in taps.items() if nodes}


def unit_moments(model: nn.Module, trace, axes: dict[str, int], data, limit: int = 5000,
                 batch_size: int = 500) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mean and std of every unit at the nodes of `axes` (name -> unit axis)."""
    s1: dict = {}
    s2: dict = {}
    n: dict = {}
    for (samples,) in tapped_samples([model], trace, axes.items(), data, limit, batch_size):
        for (k, _), v in samples.items():
            s1[k] = s1.get(k, 0) + v.sum(0)
            s2[k] = s2.get(k, 0) + (v * v).sum(0)
            n[k] = n.get(k, 0) + len(v)
    return {k: (s1[k] / n[k], (s2[k] / n[k] - (s1[k] / n[k]) ** 2).clamp_min(0).sqrt()) for k in axes}


def input_second_moments(model: nn.Module, trace, data, limit: int = 5000,
                         batch_size: int = 500) -> dict[str, torch.Tensor]:
    """E[x x^T] of the inputs of every linear and convolution layer, keyed by its weight's state key.

    Linear: over input features; conv: over input channels, positions as samples.
    """
    inputs = {key: (node, lambda v, a=axis: as_samples(v, a)) for key, node, axis in trace.layer_inputs()}
    return input_grams(model, trace, inputs, data, limit, batch_size)


def input_grams(model: nn.Module, trace, inputs: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]],
                data, limit: int = 5000, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """E[r r^T] over the rows r = rows_of(x) of node x, per key of `inputs` (key -> (node, rows_of)):
    the second moments a layer's weights act on (features, channels, or unfolded patches)."""
    sums: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    for (values,) in tapped_values([model], trace, {n for n, _ in inputs.values()}, data, limit, batch_size):
        for key, (node, rows_of) in inputs.items():
            r = rows_of(values[node]).double()
            sums[key] = sums.get(key, 0) + r.T @ r
            count[key] = count.get(key, 0) + len(r)
    return {key: sums[key] / count[key] for key in inputs}


def example_for(model: nn.Module, example_input=None, data=None):
    """An input batch to trace `model` with: the one given, else the first of `data`, else a zoo model's
    shape; on the model's device (a CPU dataset traces a model on the GPU)."""
    if example_input is not None:
        x = example_input
    elif data is not None:
        x = first_inputs(data)
    else:
        x = zoo_example_input(model)
        if x is None:
            raise ModefuseError("pass example_input= (one batch of inputs) so that the model can be traced")
    p = next(model.parameters(), None)
    return x if p is None else on_device(x, p.device)


def taps(spec: PermutationSpec, model: nn.Module, example_input, data):
    """(unit_nodes, trace): where each group's units can be read on data. A hand-written spec has no
    trace: the model is traced for it (the spec itself is left as it is)."""
    trace = trace_of(spec)
    if trace is None:
        traced = infer_spec(model, example_for(model, example_input, data))
        return traced.unit_nodes, trace_of(traced)
    return spec.unit_nodes, trace
