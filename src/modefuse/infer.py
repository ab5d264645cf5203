"""`infer_spec`: read a module's permutation structure off its `torch.fx` graph.

Every tensor flowing through the graph carries at most one axis of hidden
units (a channel or feature axis) made of segments, each a unit variable with
a layout. Layers with weights create variables; element-wise ops, norms and
pooling pass them on; residual additions unify them (union-find); flatten and
reshape turn a channel into blocks of features; concatenation lays variables
side by side. Variables reaching the network's output are fixed, as are
inputs. Whatever the walk cannot place raises `SpecInferenceError` naming the
node, so that the user can write the spec by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import SpecInferenceError
from .spec import PLAIN, Layout, PermutationSpec

_HOW_TO = ("write the spec by hand as plain data: mf.PermutationSpec(groups={'name': [('layer.weight', 0), "
           "...]}) and pass it as spec= (see modefuse/spec.py)")


@dataclass(frozen=True)
class Seg:
    """A unit variable laid out on an activation axis."""

    var: int
    layout: Layout = PLAIN


@dataclass(frozen=True)
class Units:
    """The unit axis of an activation tensor and the segments on it."""

    axis: int
    segs: tuple[Seg, ...]


@dataclass(frozen=True)
class LayerStack:
    """A recurrent layer's final states (layers, N, H): one variable per row of axis 0."""

    vars: tuple[int, ...]


FIXED = 0

_PASS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Hardtanh,
                 nn.ReLU6, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                 nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Softmax, nn.LogSoftmax, nn.MaxPool1d, nn.MaxPool2d,
                 nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                 nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d)
_PASS_FUNCS = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "dropout", "dropout2d", "leaky_relu", "elu",
               "softplus", "abs", "neg", "exp", "clamp", "clamp_", "contiguous", "clone", "float", "double",
               "half", "to", "detach", "softmax", "log_softmax", "hardtanh", "relu6", "mish", "hardswish",
               "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
               "adaptive_avg_pool2d", "adaptive_max_pool2d", "interpolate", "pad", "sqrt", "square", "pow",
               "type_as", "cpu", "cuda", "requires_grad_"}
_BINARY = {"add", "iadd", "sub", "isub", "mul", "imul", "truediv", "itruediv", "div", "add_", "mul_", "sub_",
           "maximum", "minimum", "where"}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "prod", "std", "var", "norm"}
_NON_TENSOR = {"size", "dim", "numel", "getattr", "len", "shape"}
_GATES = {nn.RNN: 1, nn.LSTM: 4, nn.GRU: 3}


def _name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Walker:
    def __init__(self, model: nn.Module, gm: fx.GraphModule):
        self.model, self.gm = model, gm
        self.parent = [FIXED]
        self.size = [0]
        self.creator = [""]
        self.entries: list[tuple[int, str, int, Layout]] = []  # (var, key, axis, layout)
        self.state_keys = set(model.state_dict())
        self.info: dict[fx.Node, Any] = {}
        self.contracted: set[tuple[str, int]] = set()
        self.unit_nodes: dict[int, list[tuple[fx.Node, int]]] = {}  # var -> nodes carrying it plainly

    # ------------------------------------------------------------ union-find over unit variables
    def new_var(self, size: int, creator: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.creator.append(creator)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int, node: fx.Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if FIXED not in (ra, rb) and self.size[ra] != self.size[rb]:
            self.fail(node, f"joins {self.size[ra]} units with {self.size[rb]} units")
        lo, hi = sorted((ra, rb))  # FIXED (0) absorbs; otherwise the earliest variable names the group
        self.parent[hi] = lo

    def fix(self, u) -> None:
        for s in self._segs(u):
            self.union(s.var, FIXED, None)

    def _segs(self, u):
        if isinstance(u, Units):
            return list(u.segs)
        if isinstance(u, LayerStack):
            return [Seg(v) for v in u.vars]
        if isinstance(u, (tuple, list)):
            return [s for x in u for s in self._segs(x)]
        return []

    def fail(self, node, why: str):
        where = f"node {node.name!r} ({node.op} {_name(node)})" if node is not None else "the graph"
        raise SpecInferenceError(f"cannot infer the permutation spec at {where}: {why}; {_HOW_TO}")

    def add(self, var: int, key: str, axis: int, layout: Layout = PLAIN) -> None:
        if key in self.state_keys:
            self.entries.append((var, key, axis, layout))

    def add_segs(self, units: Units | None, key: str, axis: int) -> None:
        """Entries where `units` are contracted: the input axis of a layer."""
        if units is not None and key in self.state_keys:
            self.contracted.add((key, axis))
            for s in units.segs:
                self.add(s.var, key, axis, s.layout)

    # ------------------------------------------------------------ the walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            out = getattr(self, "op_" + node.op)(node)
            self.info[node] = out
            if isinstance(out, Units) and len(out.segs) == 1 and out.segs[0].layout == PLAIN:
                self.unit_nodes.setdefault(out.segs[0].var, []).append((node, out.axis))

    def arg_units(self, node) -> list[Units]:
        infos = [self.info.get(a) for a in node.all_input_nodes]
        if any(isinstance(u, (LayerStack, tuple)) for u in infos) and _name(node) not in ("getitem", "output"):
            self.fail(node, "uses a recurrent module's outputs in a way modefuse cannot follow")
        return [u for u in infos if isinstance(u, Units)]

    def op_placeholder(self, node):
        return None

    def op_get_attr(self, node):
        return None

    def op_output(self, node):
        self.fix([self.info.get(a) for a in node.all_input_nodes])
        return None

    def op_call_module(self, node):
        mod = self.gm.get_submodule(node.target)
        inp = self.info.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        t = node.target
        if inp is not None and not isinstance(inp, Units):
            self.fail(node, "takes a recurrent module's raw output tuple or stacked states")
        if isinstance(mod, _PASS_MODULES):
            return inp
        if isinstance(mod, nn.Linear):
            if inp is not None and inp.axis != len(_shape(node.args[0])) - 1:
                self.fail(node, "a Linear's input features are not on the last axis")
            return self.layer(node, t, mod.out_features, inp, out_axis=len(_shape(node)) - 1)
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if inp is not None and inp.axis != 1:
                self.fail(node, "a convolution's input channels are not on axis 1")
            if mod.groups != 1:
                if mod.groups == mod.in_channels == mod.out_channels and inp is not None:  # depthwise
                    for s in inp.segs:
                        self.add(s.var, f"{t}.weight", 0, s.layout)
                        self.add(s.var, f"{t}.bias", 0, s.layout)
                    return inp
                self.fail(node, f"grouped convolution (groups={mod.groups}) is not supported")
            return self.layer(node, t, mod.out_channels, inp, out_axis=1)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return self.channelwise(node, t, inp, ("weight", "bias", "running_mean", "running_var"))
        if isinstance(mod, nn.GroupNorm):
            if mod.num_groups not in (1, mod.num_channels):
                self.fail(node, f"GroupNorm with {mod.num_groups} groups mixes units within a group")
            return self.channelwise(node, t, inp, ("weight", "bias"))
        if isinstance(mod, nn.LayerNorm):
            if inp is not None:
                nd = len(_shape(node.args[0]))
                first = nd - len(mod.normalized_shape)
                if inp.axis >= first:
                    for s in inp.segs:
                        self.add(s.var, f"{t}.weight", inp.axis - first, s.layout)
                        self.add(s.var, f"{t}.bias", inp.axis - first, s.layout)
            return inp
        if isinstance(mod, nn.PReLU):
            if mod.num_parameters > 1:
                return self.channelwise(node, t, inp, ("weight",))
            return inp
        if isinstance(mod, nn.Flatten):
            return self.reshape(node, inp)
        if isinstance(mod, nn.Embedding):
            v = self.new_var(mod.embedding_dim, t)
            self.add(v, f"{t}.weight", 1)
            return Units(len(_shape(node)) - 1, (Seg(v),))
        if type(mod) in _GATES:
            return self.recurrent(node, t, mod, inp)
        if inp is None and not self.arg_units(node):
            return None
        self.fail(node, f"module type {type(mod).__name__} is not known to modefuse")

    def layer(self, node, t, out_size, inp, out_axis):
        v = self.new_var(out_size, t)
        self.add(v, f"{t}.weight", 0)
        self.add(v, f"{t}.bias", 0)
        self.add_segs(inp, f"{t}.weight", 1)
        return Units(out_axis, (Seg(v),))

    def channelwise(self, node, t, inp, names):
        if inp is not None:
            if inp.axis != 1 and not (len(_shape(node)) == 2 and inp.axis == 1):
                self.fail(node, "a normalization's channels are not on axis 1")
            for s in inp.segs:
                for n in names:
                    self.add(s.var, f"{t}.{n}", 0, s.layout)
        return inp

    def recurrent(self, node, t, mod, inp):
        if mod.bidirectional or getattr(mod, "proj_size", 0):
            self.fail(node, "bidirectional or projected recurrent layers are not supported")
        gates, h = _GATES[type(mod)], mod.hidden_size
        prev = inp
        gate_layout = Layout(tiles=gates, stride=h)
        layer_vars: list[int] = []
        for layer in range(mod.num_layers):
            v = self.new_var(h, t if mod.num_layers == 1 else f"{t}.l{layer}")
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                self.add(v, f"{t}.{w}_l{layer}", 0, gate_layout)
            self.add_segs(Units(2, (Seg(v),)), f"{t}.weight_hh_l{layer}", 1)
            self.add_segs(prev, f"{t}.weight_ih_l{layer}", 1)
            prev = Units(2, (Seg(v),))
            layer_vars.append(v)
        hidden = prev if mod.num_layers == 1 else LayerStack(tuple(layer_vars))
        return (prev, (hidden, hidden) if isinstance(mod, nn.LSTM) else hidden)

    def op_call_method(self, node):
        return self.function(node, node.target)

    def op_call_function(self, node):
        return self.function(node, _name(node))

    def function(self, node, name):
        name = name.lstrip("_") if name not in ("__getitem__",) else "getitem"
        args = node.args
        first = self.info.get(args[0]) if args and isinstance(args[0], fx.Node) else None
        if name == "getitem":
            return self.getitem(node, first, args[1])
        if name in _NON_TENSOR or _shape(node) is None and not isinstance(node.meta.get("tensor_meta"), tuple):
            return None
        if name in _PASS_FUNCS:
            return first
        if name in _BINARY:
            return self.binary(node)
        if name in _RESHAPE:
            return self.reshape(node, first)
        if name in ("permute", "transpose", "movedim", "swapaxes", "t"):
            return self.move(node, first, name)
        if name in _REDUCE:
            return self.reduce(node, first)
        if name in ("expand", "expand_as", "broadcast_to", "repeat"):
            return self.expand(node, first)
        if name in ("cat", "concat", "concatenate"):
            return self.cat(node)
        if name == "stack":
            return self.stack(node)
        if not self.arg_units(node):
            return None
        self.fail(node, f"operation {name!r} on hidden units is not known to modefuse")

    def getitem(self, node, src, index):
        if isinstance(src, tuple):
            return src[index]
        if isinstance(src, LayerStack):
            if isinstance(index, int):
                return Units(1, (Seg(src.vars[index]),))
            self.fail(node, "indexes the final states of a multi-layer recurrent module other than by layer")
        if src is None:
            return None
        if not isinstance(src, Units):
            self.fail(node, "indexes an output modefuse cannot follow")
        index = index if isinstance(index, tuple) else (index,)
        nd_in = len(_shape(node.args[0]))
        if Ellipsis in index:
            i = index.index(Ellipsis)
            index = index[:i] + (slice(None),) * (nd_in - len(index) + 1) + index[i + 1:]
        in_dim, out_dim, new_axis = 0, 0, None
        for ix in index:
            if ix is None:
                out_dim += 1
                continue
            if in_dim == src.axis:
                if not (isinstance(ix, slice) and ix == slice(None)):
                    self.fail(node, "indexes into the hidden-unit axis")
                new_axis = out_dim
            if isinstance(ix, int):
                in_dim += 1
            elif isinstance(ix, slice):
                in_dim, out_dim = in_dim + 1, out_dim + 1
            else:
                self.fail(node, "advanced indexing of a tensor with hidden units")
        if new_axis is None:
            new_axis = out_dim + (src.axis - in_dim)
        return Units(new_axis, src.segs)

    def binary(self, node):
        out_nd = len(_shape(node))
        units = []
        for a in node.all_input_nodes:
            u, shp = self.info.get(a), _shape(a)
            if isinstance(u, Units):
                units.append((u, out_nd - (len(shp) - u.axis)))
        if not units:
            return None
        first, axis = units[0]
        for u, ax in units[1:]:
            if ax != axis or len(u.segs) != len(first.segs) or any(
                    s.layout != f.layout for s, f in zip(u.segs, first.segs)):
                self.fail(node, "combines tensors whose hidden units are laid out differently")
            for s, f in zip(u.segs, first.segs):
                self.union(s.var, f.var, node)
        for a in node.all_input_nodes:  # a tensor without units but spread over the unit axis pins them
            shp = _shape(a)
            if self.info.get(a) is None and shp is not None:
                pos = axis - (out_nd - len(shp))
                if 0 <= pos < len(shp) and shp[pos] > 1:
                    if a.op == "get_attr" and len(first.segs) == 1:
                        self.add(first.segs[0].var, a.target, pos, first.segs[0].layout)
                    else:
                        self.fix(first)
        return Units(axis, first.segs)

    def reshape(self, node, src):
        if src is None:
            return None
        a_shape, b_shape = _shape(node.all_input_nodes[0]), _shape(node)
        axis = src.axis
        # find the runs of input dims and output dims with equal products, around the unit axis
        i = j = 0
        pi = pj = 1
        start_i = start_j = 0
        while i < len(a_shape) or j < len(b_shape):
            if pi == pj and (i > start_i or j > start_j):
                if start_i <= axis < i:
                    break
                start_i, start_j, pi, pj = i, j, 1, 1
                continue
            if (pi <= pj and i < len(a_shape)) or j >= len(b_shape):
                pi *= a_shape[i]
                i += 1
            else:
                pj *= b_shape[j]
                j += 1
        in_run, out_run = a_shape[start_i:i], b_shape[start_j:j]
        if not start_i <= axis < i:
            self.fail(node, "reshape modefuse cannot follow")
        kept = [d for d, n in enumerate(out_run) if n != 1]
        if len([n for n in in_run if n != 1]) <= 1 and len(kept) <= 1:  # only size-1 dims change
            return Units(start_j + (kept[0] if kept else 0), src.segs)
        if len(out_run) != 1:
            self.fail(node, "splits the hidden-unit axis")
        pre = math.prod(in_run[: axis - start_i])
        post = math.prod(in_run[axis - start_i + 1:])
        size = a_shape[axis]
        segs = []
        for s in src.segs:
            lay = s.layout
            if pre > 1 and lay.tiles > 1:
                self.fail(node, "flattens tiled hidden units")
            if pre > 1:
                lay = Layout(lay.offset * post, lay.block * post, pre, size * post)
            else:
                stride = (lay.stride or 0) * post
                lay = Layout(lay.offset * post, lay.block * post, lay.tiles, stride)
            segs.append(Seg(s.var, lay))
        return Units(start_j, tuple(segs))

    def move(self, node, src, name):
        if src is None:
            return None
        nd = len(_shape(node))
        dims = [d for d in node.args[1:] if not isinstance(d, fx.Node)]
        if name == "permute":
            order = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else list(dims)
            order = [d % nd for d in order]
            return Units(order.index(src.axis), src.segs)
        if name == "t":
            return Units(nd - 1 - src.axis, src.segs)
        a, b = (dims + [node.kwargs.get("dim0"), node.kwargs.get("dim1")])[:2]
        a, b = a % nd, b % nd
        if name == "movedim":
            order = list(range(nd))
            order.insert(b, order.pop(a))
            return Units(order.index(src.axis), src.segs)
        return Units(b if src.axis == a else a if src.axis == b else src.axis, src.segs)

    def expand(self, node, src):
        """Broadcasting to a larger shape: new leading dims; the unit axis itself must not grow."""
        if src is None:
            return None
        a_shape, b_shape = _shape(node.all_input_nodes[0]), _shape(node)
        axis = src.axis + len(b_shape) - len(a_shape)
        if b_shape[axis] != a_shape[src.axis]:
            self.fail(node, "repeats the hidden-unit axis")
        return Units(axis, src.segs)

    def reduce(self, node, src):
        if src is None:
            return None
        nd = len(_shape(node.args[0]))
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dim is None or isinstance(dim, fx.Node):
            return None  # a full reduction: invariant to any permutation
        dims = {d % nd for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        if src.axis in dims:
            return None
        return Units(src.axis if keep else src.axis - sum(d < src.axis for d in dims), src.segs)

    def cat(self, node):
        tensors = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        infos = [self.info.get(t) for t in tensors]
        if not any(isinstance(u, Units) for u in infos):
            return None
        nd = len(_shape(node))
        dim %= nd
        axes = {u.axis for u in infos if isinstance(u, Units)}
        if axes != {dim}:  # concatenated along another axis: the pieces share their units
            return self.binary(node)
        segs, offset = [], 0
        for t, u in zip(tensors, infos):
            if isinstance(u, Units):
                segs += [Seg(s.var, s.layout._replace(offset=s.layout.offset + offset)) for s in u.segs]
            offset += _shape(t)[dim]
        return Units(dim, tuple(segs))

    def stack(self, node):
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        infos = [self.info.get(t) for t in node.args[0]]
        units = [x for x in infos if isinstance(x, Units)]
        if not units:
            return None
        first = units[0]
        for x in units[1:]:
            for s, f in zip(x.segs, first.segs):
                self.union(s.var, f.var, node)
        dim %= len(_shape(node))
        return Units(first.axis + (dim <= first.axis), first.segs)


def trace(model: nn.Module, example_input, leaf_modules: tuple[type, ...] = ()) -> fx.GraphModule:
    """Trace `model` with fx and record each node's output shape on `example_input`."""

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaf_modules) or super().is_leaf_module(m, qualname)

    try:
        graph = Tracer().trace(model)
    except Exception as e:  # fx raises many kinds: control flow on tensors, unsupported builtins
        raise SpecInferenceError(f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}. Mark the offending submodule as "
                                 f"a leaf (leaf_modules=) if modefuse knows its type, or {_HOW_TO}") from None
    gm = fx.GraphModule(model, graph)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    with torch.no_grad():
        was = model.training
        gm.eval()
        try:
            ShapeProp(gm).propagate(*inputs)
        finally:
            model.train(was)
    return gm


def infer_spec(model: nn.Module, example_input, leaf_modules: tuple[type, ...] = ()) -> PermutationSpec:
    """The permutation spec of `model`, inferred from its fx graph run on `example_input`."""
    gm = trace(model, example_input, leaf_modules)
    w = _Walker(model, gm)
    w.run()
    groups: dict[str, list[tuple[str, int]]] = {}
    layouts: dict[tuple[str, str, int], Layout] = {}
    sizes: dict[str, int] = {}
    for var, key, axis, layout in w.entries:
        root = w.find(var)
        if root == FIXED:
            continue
        g = w.creator[root]
        if (key, axis) not in groups.setdefault(g, []):
            groups[g].append((key, axis))
        sizes[g] = w.size[root]
        if layout != PLAIN:
            layouts[(g, key, axis)] = layout
    unit_nodes: dict[str, list[tuple[str, int]]] = {}
    for v, nodes in w.unit_nodes.items():
        if w.find(v) != FIXED:
            unit_nodes.setdefault(w.creator[w.find(v)], []).extend((n.name, ax) for n, ax in nodes)
    spec = PermutationSpec(groups, layouts, sizes, contracted=w.contracted, unit_nodes=unit_nodes)
    spec.graph_module = gm
    return spec.check(model.state_dict())
