"""Loss planes: loss and accuracy over the plane through three models (the WB paper's Figure 1)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from ..zoo.batching import batches
from ..checks import int_at_least, nonneg_float, optional_positive_int
from ..errors import InvalidArgumentError
from .interpolate import Blender
from ..progress import bar


@dataclass
class Plane:
    """Grid values [row = y][column = x] and the anchors' coordinates in the plane's orthonormal basis."""

    xs: list[float]
    ys: list[float]
    loss: list[list[float]]
    accuracy: list[list[float]]
    anchors: dict[str, tuple[float, float]]
    anchor_loss: dict[str, float] = field(default_factory=dict)
    anchor_accuracy: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def plot(self, path: str | os.PathLike, title: str = "") -> None:
        """Filled contours of test loss and accuracy with the three models marked and labelled."""
        from .plots import plot_plane
        plot_plane(self, path, title)


def plane(a: nn.Module, b: nn.Module, c: nn.Module, data, resolution: int = 21, margin: float = 0.25,
          bn_data=None, labels=("model 1", "model 2", "permuted model 2"), progress: bool = True,
          limit: int | None = None) -> Plane:
    """Evaluate the plane through a, b, c on a resolution x resolution grid (margins around the three).

    The loss landscape around three models, as in the WB paper's Figure 1 (Akash et al. 2023): with c
    the copy of b permuted toward a (the default labels), it shows whether a and the permuted b share a
    low-loss basin that a and b do not.
    Basis: e1 along b - a, e2 along the part of c - a orthogonal to it (parameters only; with
    BatchNorm, statistics are recomputed at every grid point on `bn_data`, default `data`). The point
    (x, y) is a + x e1 + y e2, evaluated as the mix of a, b and c (coefficients summing to 1) that
    equals it, every floating-point tensor mixed.

    Parameters
    ----------
    a, b, c : nn.Module
        The three models (same architecture); a is the origin. Two equal models, or c on the line
        through a and b, make the plane degenerate: an error.
    data : batches, Dataset or tensor
        Labelled (inputs, targets) examples the loss (cross-entropy) and accuracy are measured on.
    resolution : int
        Grid points per side (at least 2).
    margin : float
        The grid extends beyond the anchors' bounding box, on every side, by this fraction of its larger
        side.
    bn_data : batches, Dataset or tensor, optional
        Inputs for the BatchNorm statistics (default: `data`).
    labels : tuple of 3 str
        Names of a, b and c in the result and the plot.
    progress : bool
        A progress bar over the grid points.
    limit : int, optional
        At most that many examples of `data`.

    Returns
    -------
    Plane
        Grid coordinates `xs`, `ys`; `loss` and `accuracy` as [row = y][column = x]; the anchors'
        coordinates in the plane's orthonormal basis, with their loss and accuracy; `Plane.plot` draws
        it.
    """
    resolution = int_at_least(resolution, 2, "resolution")
    margin = nonneg_float(margin, "margin")
    limit = optional_positive_int(limit, "limit")
    blend = Blender(a, b, c)
    fa, fb, fc = (_flat(m).double() for m in (a, b, c))  # double: a near-degenerate plane is told apart
    scale = max(fa.norm().item(), fb.norm().item(), 1e-30)
    u, v = fb - fa, fc - fa
    del fa, fb, fc
    nu = u.norm()
    if nu <= 1e-6 * scale:
        raise InvalidArgumentError(f"{labels[1]} equals {labels[0]}: the plane through them is degenerate; "
                                   f"pass two different models")
    e1 = u / nu
    vx = v @ e1
    vp = (v - vx * e1).norm()
    if vp <= 1e-6 * max(v.norm().item(), 1e-30):  # c - a within a millionth of a radian of the line
        raise InvalidArgumentError(f"{labels[2]} lies on the line through {labels[0]} and {labels[1]}: the plane "
                                   f"through them is degenerate; pass a third model off that line")
    anchors = {labels[0]: (0.0, 0.0), labels[1]: (nu.item(), 0.0), labels[2]: (vx.item(), vp.item())}
    px = [p[0] for p in anchors.values()]
    py = [p[1] for p in anchors.values()]
    span = max(max(px) - min(px), max(py) - min(py))
    xs = torch.linspace(min(px) - margin * span, max(px) + margin * span, resolution).tolist()
    ys = torch.linspace(min(py) - margin * span, max(py) + margin * span, resolution).tolist()
    cached = list(batches(data, 1000, limit=limit))
    first = None if blend.batchnorm else _cache_first_layer(blend, [a, b, c], cached)

    def at(x: float, y: float) -> dict[str, float]:
        # a + x e1 + y e2 as a combination of a, b, c (coefficients sum to 1)
        cc = y / vp.item()
        cb = x / nu.item() - cc * vx.item() / nu.item()
        coef = [1 - cb - cc, cb, cc]
        if first is not None:
            first.start(coef)
        return blend.evaluate(coef, cached, bn_data)

    loss = [[0.0] * resolution for _ in ys]
    acc = [[0.0] * resolution for _ in ys]
    grid = [(i, j) for i in range(resolution) for j in range(resolution)]
    for i, j in bar(grid, desc="loss plane", enabled=progress, unit="point", leave=True):
        r = at(xs[j], ys[i])
        loss[i][j], acc[i][j] = r["loss"], r["accuracy"]
    res = Plane(xs, ys, loss, acc, anchors)
    for name, (x, y) in anchors.items():
        r = at(x, y)
        res.anchor_loss[name], res.anchor_accuracy[name] = r["loss"], r["accuracy"]
    return res


class _MixedOutputs(nn.Module):
    """Stands in for a model's first weighted layer. Its input depends on no weight and the layer is
    linear in its weights, so its output at a mix of the endpoints is the same mix of the endpoints'
    outputs: computed once per batch, then combined at every grid point (the first layer of an MLP on
    images is about half of its work)."""

    def __init__(self, outputs: list[torch.Tensor]):
        super().__init__()
        self.outputs, self.coef, self.i = outputs, None, 0

    def start(self, coef) -> None:
        self.coef, self.i = torch.tensor(coef, dtype=self.outputs[0].dtype), 0

    def forward(self, x):
        out = torch.tensordot(self.coef.to(x.device), self.outputs[self.i], dims=1)
        self.i += 1
        return out


@torch.no_grad()
def _cache_first_layer(blend: Blender, endpoints, cached, max_bytes: int = 512 * 2**20) -> _MixedOutputs | None:
    from ..spec.trace import Trace
    model = blend.module
    try:
        trace = Trace(model, (cached[0][0][:2],), {})
    except Exception:  # untraceable models are evaluated point by point
        return None
    layers = trace.layers()
    if not layers or not isinstance(model.get_submodule(layers[0].weight.rpartition(".")[0]),
                                    (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return None
    key, bias, node_name = layers[0].weight, layers[0].bias, layers[0].node
    params = trace.program.graph_signature.inputs_to_parameters
    for n in trace.program.graph.nodes:  # a weighted op before the first layer: no cache
        if n.name == node_name:
            break
        if n.op == "call_function" and any(params.get(a.name) not in (None, key, bias) for a in n.all_input_nodes):
            return None
    target = key.rpartition(".")[0]
    feeds: dict[int, object] = {}

    def feed(x):
        if len(x) not in feeds:
            feeds[len(x)] = trace.tap(model, [layers[0].input], len(x))
        return feeds[len(x)](x)

    outputs = []
    for x, _ in cached:
        inp = feed(x)[0]
        outputs.append(torch.stack([e.get_submodule(target)(inp) for e in endpoints]))
        if sum(o.numel() * o.element_size() for o in outputs) > max_bytes:
            return None
    stand_in = _MixedOutputs(outputs)
    parent, _, child = target.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, stand_in)
    return stand_in


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])
