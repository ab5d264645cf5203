"""Spec inference rules: one per ATen op family, each saying which axes of its inputs and output
carry the same hidden units.

A rule is `rule(w, node) -> info`: it reads its inputs' axes with `w.axes(arg)` (a tuple of
`dims.Axis`, one per tensor axis; parameters carry one unit variable per axis), joins what must
carry the same units with `w.unify`, marks the axes a layer produces with `w.produces` and
records a layer's input axis with `w.contracts`, and returns the output's axes (`w.act(...)`; a
tuple of them for several outputs). Ops whose inputs carry no units need no rule.

Where an op is known but does not commute with permuting some axis (a cumulative sum over units,
indexing into them), the rule pins those units with `w.pin` (they stay where they are, and the user
is told); an op without a rule that reaches hidden units is an error naming the node.

`register_rule(op, ...)` adds a rule for a user's own op (a `torch.library` custom op, or any
ATen op modefuse does not know), so that a custom block never needs a whole hand-written spec.
"""
from __future__ import annotations

import operator
from typing import Callable

import torch

from .dims import Atom, Cat, axis_size, cut, fixed, has_units, plain, reshape

aten = torch.ops.aten
Rule = Callable[["object", "torch.fx.Node"], object]
RULES: dict[object, Rule] = {}


def register_rule(*ops) -> Callable[[Rule], Rule]:
    """Decorator: use `fn(w, node)` for the nodes calling any of `ops` (an op overload such as
    `torch.ops.aten.cumsum.default`, its packet `torch.ops.aten.cumsum`, or a name "mylib::op").

    Teaches `infer_spec` an op it does not know (a `torch.library` custom op, or an ATen op without a
    rule), so that a model using it needs no hand-written spec. The rule is called for each node of the
    exported graph that calls one of `ops` on hidden units: it reads its inputs' axes with `w.axes(arg)`,
    joins what must carry the same units with `w.unify`, marks the axes a layer produces with
    `w.produces` and a layer's input axis with `w.contracts`, pins units the op does not commute with
    (`w.pin`), and returns the output's axes (`w.act(axes)`; a tuple of them for several outputs).
    Specs inferred (and cached) before the rule was registered are not reused.

    Parameters
    ----------
    *ops : op overload, op packet or str
        The ops the rule handles; a rule already registered for one of them is replaced.

    Returns
    -------
    callable
        The decorator; it registers `fn` and returns it unchanged.
    """

    def deco(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return deco


def rule_for(target) -> Rule | None:
    for key in (target, getattr(target, "overloadpacket", None), getattr(target, "name", lambda: None)(),
                str(getattr(target, "overloadpacket", ""))):
        if key is not None and key in RULES:
            return RULES[key]
    return None


def _ops(*names: str) -> list:
    """The ATen op packets of these names that this torch has."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def _arg(node, i, name, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _name(node) -> str:
    return str(getattr(node.target, "overloadpacket", node.target)).replace("aten.", "")


def _dim(d, nd):
    return d % nd if nd else 0


# ---------------------------------------------------------------- element-wise (broadcasting)
POINTWISE = _ops(
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardtanh_", "leaky_relu", "elu", "selu",
    "celu", "mish", "hardswish", "hardsigmoid", "softplus", "relu6", "prelu", "glu", "erf", "exp", "log",
    "neg", "abs", "sqrt", "rsqrt", "reciprocal", "square", "pow", "sin", "cos", "sign", "clamp", "clamp_min",
    "clamp_max", "clip", "dropout", "feature_dropout", "alpha_dropout", "native_dropout", "clone",
    "contiguous", "alias", "detach", "lift_fresh_copy", "to", "_to_copy", "type_as", "float", "add", "add_",
    "sub", "sub_", "mul", "mul_", "div", "div_", "rsub", "maximum", "minimum", "where", "masked_fill",
    "masked_fill_", "softmax", "_softmax", "log_softmax", "_log_softmax", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_not", "bitwise_and", "bitwise_or", "__and__", "__or__", "lerp",
    "addcmul", "addcdiv", "copy", "fill", "zeros_like", "ones_like", "full_like", "empty_like", "nan_to_num",
    "silu_", "gelu_", "sigmoid_", "tanh_", "dropout_", "exp_", "threshold",
)


@register_rule(*POINTWISE)

def pointwise(w, node):
    """Element-wise, with broadcasting: the inputs' axes of the output's size carry the same units.

    A tensor without units spread over an axis with units (a constant per channel) pins them.
    Softmax over a unit axis is equivariant too.
    """
    shape = w.out_shape(node)
    if shape is None:
        return None
    out = []
    tensors = [a for a in node.all_input_nodes if w.is_tensor(a) and not w.is_uniform(a)]
    for d in range(len(shape)):
        axis = None
        for a in tensors:
            ax = w.axes(a)
            k = d - (len(shape) - len(ax))
            if k < 0 or axis_size(ax[k]) != shape[d] or shape[d] == 1:
                continue
            if axis is None:
                axis = ax[k]
            elif has_units(axis) or has_units(ax[k]):
                w.unify(axis, ax[k], node)
                if not has_units(axis):
                    axis = ax[k]
        out.append(axis if axis is not None else plain(shape[d]))
    if isinstance(w.meta(node), (tuple, list)):  # native_dropout: (out, mask)
        return (w.act(out), w.act(out))
    return w.act(out)


# ---------------------------------------------------------------- shape: views and moves
@register_rule(*_ops(
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze",
    "unsqueeze_", "view_as", "reshape_as",
))
def view(w, node):
    return w.act(reshape(w.uv, w.axes(node.args[0]), w.out_shape(node)))


@register_rule(*_ops("permute", "transpose", "t", "movedim", "swapaxes", "numpy_T"))
def move(w, node):
    axes = list(w.axes(node.args[0]))
    nd = len(axes)
    target = node.target.overloadpacket
    if target is aten.permute:
        order = [_dim(d, nd) for d in node.args[1]]
    elif target in (aten.t, aten.numpy_T):
        order = list(reversed(range(nd)))
    elif target is aten.movedim:
        src, dst = node.args[1], node.args[2]
        src, dst = ([src], [dst]) if isinstance(src, int) else (list(src), list(dst))
        src, dst = [_dim(d, nd) for d in src], [_dim(d, nd) for d in dst]
        rest = iter(d for d in range(nd) if d not in src)
        order = [src[dst.index(i)] if i in dst else next(rest) for i in range(nd)]
    else:
        a, b = _dim(node.args[1], nd), _dim(node.args[2], nd)
        order = list(range(nd))
        order[a], order[b] = order[b], order[a]
    return w.act([axes[i] for i in order])


@register_rule(*_ops("expand", "expand_as", "broadcast_to"))
def expand(w, node):
    axes, shape = w.axes(node.args[0]), w.out_shape(node)
    lead = len(shape) - len(axes)
    return w.act([plain(s) if d < lead or axis_size(axes[d - lead]) != s else axes[d - lead]
                  for d, s in enumerate(shape)])


@register_rule(*_ops(
    "repeat", "tile", "flip", "roll", "cumsum", "cumprod", "sort", "argsort", "topk", "gather", "scatter",
    "index_select", "narrow_copy", "diff", "tril", "triu",
))
def along_axes(w, node):
    """Ops that move or mix values along some axes: those whose size or order changes must hold no
    units; the others keep theirs (`repeat` of a batch axis, `cumsum` over positions)."""
    axes, shape = w.axes(node.args[0]), w.out_shape(node)
    dims = _touched(node, len(axes))
    out = []
    for d, s in enumerate(shape if not isinstance(shape, list) else shape[0]):
        if d < len(axes) and d not in dims and axis_size(axes[d]) == s:
            out.append(axes[d])
        else:
            if d < len(axes) and has_units(axes[d]):
                w.pin(node, axes[d], f"{_name(node)} mixes or reorders the values along axis {d}")
            out.append(plain(s))
    res = w.act(out)
    return (res, w.act([plain(s) for s in shape[1]])) if isinstance(shape, list) else res


def _touched(node, nd):
    t = node.target.overloadpacket
    if t in (aten.repeat, aten.tile):
        reps = list(node.args[1])
        reps = [1] * (nd - len(reps)) + reps[-nd:] if nd else []
        return {d for d, r in enumerate(reps) if r != 1}
    if t in (aten.flip,):
        return {_dim(d, nd) for d in node.args[1]}
    if t in (aten.roll,):
        dims = _arg(node, 2, "dims", [])
        return {_dim(d, nd) for d in (dims if isinstance(dims, (list, tuple)) else [dims])} or set(range(nd))
    if t in (aten.tril, aten.triu):
        return {nd - 2, nd - 1}
    if t in (aten.sort, aten.argsort, aten.topk):
        return {_dim(_arg(node, 2 if t is aten.topk else 1, "dim", -1), nd)}
    return {_dim(_arg(node, 1, "dim", -1), nd)}


@register_rule(*_ops("select"))
def select(w, node):
    src = w.info.get(node.args[0])
    nd = len(w.shape(node.args[0]))
    d = _dim(node.args[1], nd)
    if w.is_stack(src, d):  # one layer's states
        return src.items[node.args[2]]
    axes = list(w.axes(node.args[0]))
    w.pin(node, axes[d], f"picks one position of axis {d}")
    return w.act(axes[:d] + axes[d + 1:])


@register_rule(*_ops("slice", "narrow"))
def slice_(w, node):
    axes = list(w.axes(node.args[0]))
    d = _dim(_arg(node, 1, "dim", 0), len(axes))
    n, shape = axis_size(axes[d]), w.out_shape(node)
    if node.target.overloadpacket is aten.narrow:
        start, step = node.args[2], 1
    else:
        start, step = _arg(node, 2, "start", 0) or 0, _arg(node, 4, "step", 1)
    start = min(max(start + n if start < 0 else start, 0), n)
    if shape[d] == n:
        return w.act(axes)
    if step == 1:
        axes[d] = _piece(w, axes[d], start, shape[d])
    else:
        w.pin(node, axes[d], f"takes every {step}th position of axis {d}")
        axes[d] = plain(shape[d])
    return w.act(axes)


def _piece(w, axis, start, length):
    """Positions start..start+length of an axis."""
    n = axis_size(axis)
    lengths = [k for k in (start, length, n - start - length) if k]
    return _pieces(w, axis, lengths)[1 if start else 0]


@register_rule(*_ops("split", "split_with_sizes", "chunk", "tensor_split"))
def split(w, node):
    """Pieces of an axis: a variable there is refined as the concatenation of the pieces' units."""
    axes = list(w.axes(node.args[0]))
    d = _dim(_arg(node, 2, "dim", 0), len(axes))
    lengths = [shape[d] for shape in w.out_shape(node)]
    pieces = _pieces(w, axes[d], lengths)
    return tuple(w.act(axes[:d] + [p] + axes[d + 1:]) for p in pieces)


def _pieces(w, axis, lengths):
    """An axis cut into consecutive pieces of `lengths` (a variable there becomes their concatenation)."""
    if has_units(axis) and len(axis) == 1 and isinstance(axis[0], Atom):
        parts = w.uv.refine(axis[0].var, "cat", tuple(n for n in lengths if n))
        if parts is not None:
            it = iter(parts)
            return [plain(n, next(it)) if n else () for n in lengths]
    if len(axis) == 1 and isinstance(axis[0], Cat) and [axis_size(p) for p in axis[0].pieces] == list(lengths):
        return list(axis[0].pieces)
    fixed(w.uv, axis)
    return [plain(n) for n in lengths]


@register_rule(*_ops("unbind"))
def unbind(w, node):
    axes = list(w.axes(node.args[0]))
    d = _dim(_arg(node, 1, "dim", 0), len(axes))
    src = w.info.get(node.args[0])
    if w.is_stack(src, d):
        return src.items
    fixed(w.uv, axes[d])
    return tuple(w.act(axes[:d] + axes[d + 1:]) for _ in w.out_shape(node))


@register_rule(*_ops("cat", "concat", "concatenate"))
def cat(w, node):
    tensors = [t for t in node.args[0] if w.shape(t) != (0,)]
    shape = w.out_shape(node)
    d = _dim(_arg(node, 1, "dim", 0), len(shape))
    all_axes = [list(w.axes(t)) for t in tensors]
    for k in range(len(shape)):
        if k != d:
            for ax in all_axes[1:]:
                w.unify(all_axes[0][k], ax[k], node)
    pieces = [ax[d] for ax in all_axes]
    axis = (Cat(tuple(pieces)),) if any(has_units(p) for p in pieces) else plain(shape[d])
    return w.act(all_axes[0][:d] + [axis] + all_axes[0][d + 1:])


@register_rule(*_ops("stack"))
def stack(w, node):
    """Stacked tensors may hold different units (a recurrent layer's states per layer)."""
    d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    items = tuple(w.act(w.axes(t)) for t in node.args[0])
    return w.stack(items, _dim(d, len(w.out_shape(node))))


# ---------------------------------------------------------------- reductions and pooling
REDUCTIONS = _ops(
    "sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "norm",
    "linalg_vector_norm", "logsumexp", "prod", "any", "all", "nansum", "argmax", "argmin",
)


@register_rule(*REDUCTIONS)

def reduce(w, node):
    """Reducing over a unit axis is invariant to its permutation (except arg-max: it returns an index)."""
    axes = w.axes(node.args[0])
    shape = w.out_shape(node)
    first = shape[0] if isinstance(shape, list) else shape
    nd = len(axes)
    t = node.target.overloadpacket
    if t is aten.norm:
        dims = _arg(node, 2, "dim", None)
    elif t is aten.linalg_vector_norm:
        dims = _arg(node, 2, "dim", None)
    else:
        dims = _arg(node, 1, "dim", None)
    dims = set(range(nd)) if dims is None or dims == [] else {_dim(x, nd) for x in (
        dims if isinstance(dims, (list, tuple)) else [dims])}
    keep = len(first) == nd
    if t in (aten.argmax, aten.argmin) or (t in (aten.max, aten.min) and isinstance(shape, list)):
        for x in dims:
            fixed(w.uv, axes[x])
    out = [plain(1) if x in dims else axes[x] for x in range(nd) if keep or x not in dims]
    res = w.act(out)
    return tuple(res for _ in shape) if isinstance(shape, list) else res


POOLING = _ops(
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "max_pool2d_with_indices", "pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
    "replication_pad2d", "upsample_nearest2d", "upsample_bilinear2d", "pixel_shuffle", "pixel_unshuffle",
)


@register_rule(*POOLING)

def spatial(w, node):
    """Pooling, padding, resizing: the axes whose size is kept keep their units; the others must hold none."""
    axes = w.axes(node.args[0])
    shape = w.out_shape(node)
    shapes = shape if isinstance(shape, list) else [shape]
    outs = []
    for s in shapes:
        out = []
        for d, n in enumerate(s):
            if d < len(axes) and axis_size(axes[d]) == n:
                out.append(axes[d])
            else:
                if d < len(axes) and has_units(axes[d]):
                    w.pin(node, axes[d], f"{_name(node)} changes the size of axis {d}")
                out.append(plain(n))
        outs.append(w.act(out))
    return tuple(outs) if isinstance(shape, list) else outs[0]


# ---------------------------------------------------------------- layers with weights
def _matmul(w, node, a, b, bias=None):
    """(..., n, k) @ (..., k, m): contracted axes joined, batch axes joined, (..., n, m) out; a
    parameter's output axis is produced there, its other axis contracted."""
    shape = w.out_shape(node)
    if len(a) < 2 or len(b) < 2:
        w.refuse(node, "matrix product of a vector")
    w.unify(a[-1], b[-2], node)
    batch = []
    nb = len(shape) - 2
    for d in range(nb):
        ka, kb = d - (nb - (len(a) - 2)), d - (nb - (len(b) - 2))
        axes = [x[k] for x, k in ((a, ka), (b, kb)) if k >= 0 and axis_size(x[k]) == shape[d] != 1]
        for other in axes[1:]:
            w.unify(axes[0], other, node)
        batch.append(axes[0] if axes else plain(shape[d]))
    out = batch + [a[-2], b[-1]]
    if bias is not None:
        bias_axes = w.axes(bias)
        for d in range(1, len(bias_axes) + 1):
            if axis_size(bias_axes[-d]) == shape[-d] != 1:
                w.unify(out[-d], bias_axes[-d], node)
    return w.act(out)


@register_rule(*_ops("linear"))
def linear(w, node):
    x, weight = node.args[0], node.args[1]
    bias = _arg(node, 2, "bias")
    wa = w.axes(weight)
    w.produces(weight, 0)
    w.contracts(weight, 1)
    return _matmul(w, node, w.axes(x), (wa[1], wa[0]), bias)


@register_rule(*_ops("mm", "bmm", "matmul", "addmm", "baddbmm", "addbmm"))
def matmul(w, node):
    t = node.target.overloadpacket
    bias = node.args[0] if t in (aten.addmm, aten.baddbmm, aten.addbmm) else None
    a, b = (node.args[1], node.args[2]) if bias is not None else (node.args[0], node.args[1])
    for arg, out_axis, in_axis in ((b, -1, -2), (a, -2, -1)):
        if w.is_param(arg):
            w.produces(arg, out_axis)
            w.contracts(arg, in_axis)
    return _matmul(w, node, w.axes(a), w.axes(b), bias)


@register_rule(*_ops(
    "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
))
def conv(w, node):
    """Channels on axis 1; weight (out, in / groups, k...) or, transposed, (in, out / groups, k...)."""
    t = node.target.overloadpacket
    x, weight, bias = node.args[0], node.args[1], _arg(node, 2, "bias")
    if t is aten.convolution:
        transposed, groups = node.args[6], node.args[8]
    else:
        transposed = t in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
        groups = _arg(node, 6, "groups", 1)
    xa, wa = list(w.axes(x)), w.axes(weight)
    out_w, in_w = (1, 0) if transposed else (0, 1)
    shape = w.out_shape(node)
    c_in = axis_size(xa[1])
    w.produces(weight, out_w)
    w.contracts(weight, in_w)
    # the input channels come in `groups` blocks, each read by its own block of filters: axis 0 of the
    # weight is (groups x out/groups), or transposed (groups x in/groups)
    xg = cut(w.uv, xa[1], (groups, c_in // groups))
    wg = cut(w.uv, wa[0], (groups, axis_size(wa[0]) // groups))
    if xg is None or wg is None:
        w.refuse(node, "grouped convolution modefuse cannot follow")
    w.unify(xg[0], wg[0], node)
    w.unify(xg[1], wg[1] if transposed else wa[1], node)
    out_axis = wg[0] + wa[1] if transposed else wa[0]
    if bias is not None:
        w.unify(out_axis, w.axes(bias)[0], node)
    return w.act([xa[0], out_axis] + [plain(s) for s in shape[2:]])


@register_rule(*_ops("embedding"))
def embedding(w, node):
    weight, ids = node.args[0], node.args[1]
    w.produces(weight, 1)
    return w.act(list(w.axes(ids)) + [w.axes(weight)[1]])


# ---------------------------------------------------------------- normalizations
def _per_channel(w, node, axis, params):
    for p in params:
        if p is not None and w.is_tensor(p):
            w.unify(axis, w.axes(p)[0], node)


@register_rule(*_ops(
    "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
    "instance_norm", "_native_batch_norm_legit_functional",
))
def batch_norm(w, node):
    xa = w.axes(node.args[0])
    _per_channel(w, node, xa[1], node.args[1:5])
    shape = w.out_shape(node)
    return (w.act(xa),) + tuple(w.act([plain(s) for s in sh]) for sh in shape[1:]) \
        if isinstance(shape, list) else w.act(xa)


@register_rule(*_ops("layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm"))
def layer_norm(w, node):
    """Normalizing over whole axes is equivariant to any permutation within them."""
    xa = w.axes(node.args[0])
    k = len(node.args[1])
    for p in node.args[2:4] if node.target.overloadpacket is not aten.rms_norm else node.args[2:3]:
        if p is not None and w.is_tensor(p):
            for d, ax in enumerate(w.axes(p)):
                w.unify(xa[len(xa) - k + d], ax, node)
    shape = w.out_shape(node)
    return (w.act(xa),) + tuple(w.act([plain(s) for s in sh]) for sh in shape[1:]) \
        if isinstance(shape, list) else w.act(xa)


@register_rule(*_ops("group_norm", "native_group_norm"))
def group_norm(w, node):
    xa = list(w.axes(node.args[0]))
    t = node.target.overloadpacket
    groups = node.args[1] if t is aten.group_norm else node.args[6]
    params = node.args[2:4] if t is aten.group_norm else node.args[1:3]
    c = axis_size(xa[1])
    parts = cut(w.uv, xa[1], (groups, c // groups))  # units move within their group, groups move whole
    if parts is None:
        fixed(w.uv, xa[1])
    _per_channel(w, node, xa[1], params)
    shape = w.out_shape(node)
    return (w.act(xa),) + tuple(w.act([plain(s) for s in sh]) for sh in shape[1:]) \
        if isinstance(shape, list) else w.act(xa)


# ---------------------------------------------------------------- attention
@register_rule(*_ops("scaled_dot_product_attention"))
def attention(w, node):
    """softmax(q k^T) v per head: q and k share the permutation of the head dimension, v and the
    output theirs; heads move as whole blocks (the same head permutation for q, k, v, out)."""
    q, k, v = (w.axes(a) for a in node.args[:3])
    w.unify(q[-1], k[-1], node)
    heads = []
    for d in range(len(q) - 2):
        hq, hk, hv = q[d], k[d - len(q) + len(k)], v[d - len(q) + len(v)]
        if axis_size(hq) != axis_size(hk):  # grouped-query attention: query heads in groups per kv head
            parts = cut(w.uv, hq, (axis_size(hk), axis_size(hq) // axis_size(hk)))
            if parts is None:
                w.refuse(node, "grouped-query heads modefuse cannot follow")
            fixed(w.uv, parts[1])
            hq_outer = parts[0]
        else:
            hq_outer = hq
        w.unify(hq_outer, hk, node)
        w.unify(hk, hv, node)
        heads.append(hq)
    mask = _arg(node, 3, "attn_mask")
    if mask is not None and w.is_tensor(mask):
        ma = w.axes(mask)
        virtual = heads + [q[-2], k[-2]]
        for d in range(1, len(ma) + 1):
            if axis_size(ma[-d]) != 1:
                w.unify(virtual[-d], ma[-d], node)
    where = w.module_path(node)
    for axes, what in ((heads, "heads"), ([q[-1]], "qk"), ([v[-1]], "vo")):
        for ax in axes:
            w.name_units(ax, f"{where}.{what}" if where else what)
    return w.act(heads + [q[-2], v[-1]])


# ---------------------------------------------------------------- recurrent layers
_GATES = {aten.lstm: 4, aten.gru: 3, aten.rnn_tanh: 1, aten.rnn_relu: 1}


@register_rule(*_GATES)

def recurrent(w, node):
    """aten.lstm/gru/rnn_*: input, hx, flat params (w_ih, w_hh[, b_ih, b_hh] per layer), has_biases,
    num_layers, dropout, train, bidirectional, batch_first. Each layer's hidden units are a group;
    its weights hold them in `gates` chunks of the same permutation."""
    t = node.target.overloadpacket
    gates = _GATES[t]
    x, hx, params, has_biases, num_layers, _, _, bidirectional, batch_first = node.args[:9]
    if bidirectional:
        w.refuse(node, "bidirectional recurrent layers are not supported")
    per = 4 if has_biases else 2
    prev = w.axes(x)[-1]
    hidden = []
    for layer in range(num_layers):
        ps = params[layer * per:(layer + 1) * per]
        key = w.param_key(ps[0])
        h = axis_size(w.axes(ps[1])[1])
        name = key.rsplit(".", 1)[0] + ("" if num_layers == 1 else f".l{layer}")
        var = w.uv.new(h)
        w.uv.mark(var, name)
        units = plain(h, var)
        for p in ps:
            parts = cut(w.uv, w.axes(p)[0], (gates, h))
            if parts is None:
                w.refuse(node, "gate weights of unexpected shape")
            fixed(w.uv, parts[0])  # the gate chunks keep their order
            w.unify(parts[1], units, node)
        w.contracts(ps[0], 1)
        w.contracts(ps[1], 1)
        w.unify(w.axes(ps[0])[1], prev, node)
        w.unify(w.axes(ps[1])[1], units, node)
        prev = units
        hidden.append(units)
    for state in hx if isinstance(hx, (list, tuple)) else [hx]:
        w.initial_state(state, hidden, node)
    xa = list(w.axes(x))
    out = w.act(xa[:-1] + [prev])
    shape = w.out_shape(node)
    states = tuple(w.stack(tuple(w.act([xa[0 if batch_first else 1], h]) for h in hidden), 0)
                   for _ in shape[1:])
    return (out,) + states


# ---------------------------------------------------------------- plumbing
@register_rule(operator.getitem)

def getitem(w, node):
    src = w.info.get(node.args[0])
    return src[node.args[1]] if isinstance(src, (tuple, list)) else None


NO_OUTPUT = _ops(
    "_assert_tensor_metadata", "sym_size", "sym_numel", "sym_stride", "_assert_async",
    "sym_constrain_range_for_size", "_assert_scalar",
)


@register_rule(*NO_OUTPUT)

def no_output(w, node):
    return None


@register_rule(*_ops("index"))
def index(w, node):
    """Advanced indexing: indexed axes must hold no units; the others keep theirs."""
    axes = list(w.axes(node.args[0]))
    idx = list(node.args[1])
    used = [d for d, i in enumerate(idx) if i is not None]
    for d in used:
        if has_units(axes[d]):
            w.pin(node, axes[d], f"indexes into axis {d}")
    shape = w.out_shape(node)
    contiguous = used == list(range(used[0], used[-1] + 1)) if used else True
    rest = [a for d, a in enumerate(axes) if d not in used]
    n_new = len(shape) - len(rest)
    if contiguous:
        before = axes[:used[0]] if used else []
        out = before + [plain(s) for s in shape[len(before):len(before) + n_new]] + axes[used[-1] + 1:]
    else:
        out = [plain(s) for s in shape[:n_new]] + rest
    return w.act([a if axis_size(a) == s else plain(s) for a, s in zip(out, shape)])
