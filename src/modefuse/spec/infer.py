"""`infer_spec`: read a module's permutation structure off its `torch.export` ATen graph.

Every parameter axis gets a unit variable (`units.UnitVars`); the walker hands each node to the
rule of its op family (`rules.py`), which joins the variables that must move together and marks
the axes a layer produces. Network inputs and outputs are fixed. At the end each class of
variables that a layer produces and nothing fixed becomes a group, and where its units sit on each
parameter axis becomes a `Layout` (`dims.positions`). Whatever no rule follows raises
`SpecInferenceError` naming the node and its op (or, with `unknown="fix"`, is left fixed).
"""
from __future__ import annotations

import hashlib
import warnings
import weakref
from collections import OrderedDict
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from . import rules as _rules
from . import cache
from .dims import Axis, Cat, axis_size, fixed, plain, positions, variables
from ..errors import SpecInferenceError
from .permutation_spec import Layout, PermutationSpec
from .units import FIXED, UnitVars

HOW_TO = ("teach modefuse the op with mf.register_rule, or write the spec by hand as plain data: "
          "mf.PermutationSpec(groups={'name': [('layer.weight', 0), ...]}) and pass it as spec= "
          "(see modefuse/spec/permutation_spec.py; PermutationSpec.from_axes builds one per tensor)")

_VIEWS = {torch.ops.aten.t, torch.ops.aten.transpose, torch.ops.aten.permute, torch.ops.aten.view,
          torch.ops.aten.reshape, torch.ops.aten.alias, torch.ops.aten.to, torch.ops.aten._to_copy,
          torch.ops.aten.unsqueeze, torch.ops.aten.expand, torch.ops.aten.contiguous, torch.ops.aten.detach}
_ZEROS = {torch.ops.aten.zeros, torch.ops.aten.new_zeros, torch.ops.aten.zeros_like}
_UNIFORM = _ZEROS | {getattr(torch.ops.aten, n) for n in ("ones", "new_ones", "ones_like", "full", "new_full",
                                                          "full_like", "scalar_tensor", "empty", "new_empty",
                                                          "empty_like") if hasattr(torch.ops.aten, n)}


class Act(NamedTuple):
    """A tensor's axes (what each holds)."""

    axes: tuple


class Stack(NamedTuple):
    """Tensors stacked on axis `dim` that may hold different units (a recurrent layer's states)."""

    items: tuple
    dim: int


class _Refused(Exception):
    pass


class Trace:
    """A model's exported program and the maps between its graph and the model's state_dict."""

    def __init__(self, model: nn.Module, args: tuple, kwargs: dict, lazy: bool = False):
        """`lazy`: export on first use of the graph (a spec from the on-disk cache needs none for weights)."""
        self.args, self.kwargs = args, kwargs
        self.type = type(model)
        self.programs: dict[int, torch.export.ExportedProgram] = {}
        self._model = weakref.ref(model)
        if not lazy:
            self.program  # noqa: B018 (export now)

    @property
    def program(self) -> torch.export.ExportedProgram:
        """The program exported on the example input."""
        batch = _batch_of(self.args, self.kwargs)
        if batch not in self.programs:
            model = self._model()
            if model is None:
                raise SpecInferenceError(f"the {self.type.__name__} this trace was made for is gone; call "
                                         f"infer_spec on the model again")
            self.programs[batch] = self._export(model, self.args, self.kwargs)
        return self.programs[batch]

    def bind(self, model: nn.Module) -> "Trace":
        """Export from `model` (same architecture) if the graph is still to be made."""
        self._model = weakref.ref(model)
        return self

    @staticmethod
    def _export(model, args, kwargs):
        was = model.training
        model.eval()
        # a third of export's time in the torch versions that have the switch; inference reads no stack traces
        quiet = hasattr(fx.config, "do_not_emit_stack_traces")
        if quiet:
            emit = fx.config.do_not_emit_stack_traces
            fx.config.do_not_emit_stack_traces = True
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*were assigned during export.*")
                return torch.export.export(model, args, kwargs, strict=False)
        except Exception as e:  # export raises many kinds: data-dependent control flow, unsupported ops
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise SpecInferenceError(f"torch.export cannot trace {type(model).__name__}: {type(e).__name__}: "
                                     f"{msg}; {HOW_TO}") from None
        finally:
            if quiet:
                fx.config.do_not_emit_stack_traces = emit
            model.train(was)

    def at_batch(self, model: nn.Module, batch: int) -> torch.export.ExportedProgram:
        """The program exported at another batch size (shapes are concrete in an exported graph)."""
        if batch not in self.programs:
            args = tuple(_resize(a, batch) for a in self.args)
            kwargs = {k: _resize(v, batch) for k, v in self.kwargs.items()}
            self.programs[batch] = self._export(model, args, kwargs)
        return self.programs[batch]

    def tap(self, model: nn.Module, node_names: list[str], batch: int):
        """A function x -> outputs of `node_names` on `model`'s own weights (same architecture)."""
        ep = self.at_batch(model, batch)
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        wanted = set(node_names)
        for node in ep.graph.nodes:
            if node.op == "output":
                break
            env[node] = g.node_copy(node, lambda n: env[n])
        found = {n.name: env[n] for n in ep.graph.nodes if n.name in wanted}
        missing = [n for n in node_names if n not in found]
        if missing:
            raise SpecInferenceError(f"node {missing[0]!r} is not in the graph of {self.type.__name__} at batch "
                                     f"size {batch}; pass data in batches of the traced size")
        g.output(tuple(found[n] for n in node_names))
        g.eliminate_dead_code()
        gm = fx.GraphModule({}, g)
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors.update(model.named_buffers(remove_duplicate=False))
        fixed_args = []
        user = []
        for spec in ep.graph_signature.input_specs:
            kind = spec.kind.name
            if kind in ("PARAMETER", "BUFFER"):
                fixed_args.append(tensors[spec.target])
            elif kind == "CONSTANT_TENSOR":
                fixed_args.append(ep.constants[spec.target])
            elif kind == "USER_INPUT":
                fixed_args.append(None)
                user.append(len(fixed_args) - 1)
            else:
                raise SpecInferenceError(f"cannot tap a graph with a {kind} input")

        def run(x):
            args = list(fixed_args)
            for i, v in zip(user, x if isinstance(x, tuple) else (x,)):
                args[i] = v
            return gm(*args)

        return run


    def layers(self) -> list["Layer"]:
        """The linear, convolution and addmm layers of the graph whose weight is a parameter, in graph order."""
        params = self.program.graph_signature.inputs_to_parameters
        out = []
        for node in self.program.graph.nodes:
            kind = _layer_kind(node)
            if kind is None:
                continue
            (x, w_arg), b_arg = ((node.args[1], node.args[2]), node.args[0]) if kind == "addmm" else (
                (node.args[0], node.args[1]), _opt(node, 2))
            key = params.get(getattr(w_arg, "name", None))
            if key is not None:
                out.append(Layer(key, params.get(getattr(b_arg, "name", None)), node.name, x.name,
                                 1 if kind == "conv" else -1, 1 if kind == "addmm" else 0, kind))
        return out

    def layer_inputs(self) -> list[tuple[str, str, int]]:
        """(weight key, input node name, the input's unit axis) of every linear and convolution layer."""
        return [(la.weight, la.input, la.axis) for la in self.layers() if la.kind in ("linear", "conv")]


class Layer(NamedTuple):
    """A layer of an exported graph: its weight and bias keys, the node computing it and the node it reads,
    the output's unit axis, the weight's output axis, and its kind (linear, conv, addmm)."""

    weight: str
    bias: str | None
    node: str
    input: str
    axis: int
    weight_axis: int
    kind: str


def _layer_kind(node) -> str | None:
    packet = getattr(node.target, "overloadpacket", None) if node.op == "call_function" else None
    if packet is torch.ops.aten.linear:
        return "linear"
    if packet in (torch.ops.aten.conv1d, torch.ops.aten.conv2d, torch.ops.aten.conv3d):
        return "conv"
    if packet is torch.ops.aten.convolution and not node.args[6]:
        return "conv"
    if packet is torch.ops.aten.addmm:
        return "addmm"
    return None


def _opt(node, i):
    return node.args[i] if len(node.args) > i else node.kwargs.get("bias")


def _batch_of(args, kwargs) -> int:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor) and a.dim():
            return a.shape[0]
    return 0


def _resize(a, batch):
    if not isinstance(a, torch.Tensor) or not a.dim():
        return a
    reps = -(-batch // a.shape[0])
    return a.repeat(reps, *([1] * (a.dim() - 1)))[:batch]


class Walker:
    """Walks an exported graph, handing each node to its rule; the state rules read and join."""

    def __init__(self, trace: Trace, state_keys, unknown: str = "error", aliases=None, outputs=None):
        self.trace, self.unknown, self.outputs = trace, unknown, outputs
        self.aliases = aliases or {}
        self.uv = UnitVars()
        self.info: dict[fx.Node, Any] = {}
        self.params: dict[str, list[int | None]] = {}  # state key -> its variable per axis
        self.param_nodes: dict[fx.Node, str] = {}
        self.contracted: set[int] = set()
        self.carriers: list[tuple[str, int, int]] = []  # (node name, axis, var): an axis holding one variable
        self.notes: list[tuple[str, str, list[int]]] = []  # units pinned: (node name, why, variables)
        self.state_keys = state_keys
        sig = trace.program.graph_signature
        self.targets = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}

    # ------------------------------------------------------------ what rules call
    def meta(self, node):
        return node.meta.get("val") if isinstance(node, fx.Node) else None

    def shape(self, arg) -> tuple[int, ...] | None:
        v = self.meta(arg)
        return tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else None

    def out_shape(self, node):
        v = self.meta(node)
        if isinstance(v, torch.Tensor):
            return tuple(int(s) for s in v.shape)
        if isinstance(v, (list, tuple)):
            return [tuple(int(s) for s in x.shape) if isinstance(x, torch.Tensor) else () for x in v]
        return None

    def is_tensor(self, arg) -> bool:
        return isinstance(self.meta(arg), torch.Tensor)

    def act(self, axes) -> Act:
        return Act(tuple(axes))

    def stack(self, items, dim) -> Stack:
        return Stack(tuple(items), dim)

    def is_stack(self, info, dim) -> bool:
        return isinstance(info, Stack) and info.dim == dim

    def axes(self, arg) -> tuple[Axis, ...]:
        info = self.info.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(info, Act):
            return info.axes
        if isinstance(info, Stack):  # used whole: the stacked tensors must share their units
            first = info.items[0].axes
            for item in info.items[1:]:
                for a, b in zip(first, item.axes):
                    self.unify(a, b, arg)
            out = list(first)
            out.insert(info.dim, plain(len(info.items)))
            return tuple(out)
        shape = self.shape(arg)
        return tuple(plain(s) for s in shape) if shape is not None else ()

    def unify(self, a: Axis, b: Axis, node) -> None:
        from .dims import unify
        if not unify(self.uv, a, b):
            self.fail(node, f"joins an axis of {axis_size(a)} units with one of {axis_size(b)}")

    def origin(self, arg) -> str | None:
        """The state key of the parameter `arg` is (or is a view of)."""
        while isinstance(arg, fx.Node):
            if arg in self.param_nodes:
                return self.param_nodes[arg]
            if arg.op != "call_function" or getattr(arg.target, "overloadpacket", None) not in _VIEWS:
                return None
            arg = arg.args[0]
        return None

    def is_uniform(self, arg) -> bool:
        """Whether `arg` holds one value everywhere (zeros, ones, full): it commutes with any permutation."""
        while isinstance(arg, fx.Node) and arg.op == "call_function":
            packet = getattr(arg.target, "overloadpacket", None)
            if packet in _UNIFORM:
                return True
            if packet not in _VIEWS:
                return False
            arg = arg.args[0]
        return False

    def is_param(self, arg) -> bool:
        return self.origin(arg) is not None

    def param_key(self, arg) -> str:
        key = self.origin(arg)
        if key is None:
            self.fail(arg, "expected a parameter here")
        return key

    def produces(self, arg, k: int) -> None:
        """Axis `k` of parameter `arg` holds the units its layer produces (a group, unless fixed)."""
        key = self.origin(arg)
        name = key.rsplit(".", 1)[0] if key and "." in key else (key or arg.name)
        for v in variables(self.axes(arg)[k]):
            if not self.uv.marked[v]:
                self.uv.mark(v, name)

    def name_units(self, axis: Axis, name: str) -> None:
        """Name the classes of `axis`'s variables (a group made of them is called so, unless a layer names it)."""
        vs = variables(axis)
        for i, v in enumerate(vs):
            r = self.uv.find(v)
            if r != FIXED and self.uv.names[r] is None:
                self.uv.names[r] = name if len(vs) == 1 else f"{name}{i}"

    def module_path(self, node) -> str:
        """The module whose forward ran this node ("" at the top)."""
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    def contracts(self, arg, k: int) -> None:
        """Axis `k` of parameter `arg` is a layer's input axis (fusion scales it by the source width)."""
        self.contracted.update(variables(self.axes(arg)[k]))

    def initial_state(self, state, hidden, node) -> None:
        """A recurrent layer's initial state: zeros are invariant; units of a state carried in join
        the layers'; any other constant pins them."""
        if state is None:
            return
        info = self.info.get(state)
        if isinstance(info, Stack) and len(info.items) == len(hidden):
            for item, h in zip(info.items, hidden):
                self.unify(item.axes[-1], h, node)
            return
        if isinstance(state, fx.Node) and getattr(state.target, "overloadpacket", None) in _ZEROS:
            return
        axes = self.axes(state)
        for h in hidden:
            self.unify(axes[-1], h, node)

    def pin(self, node, axis: Axis, why: str) -> None:
        """Fix the units of `axis`: the op at `node` does not commute with permuting them."""
        vs = variables(axis)
        if vs:
            self.notes.append((node.name, why, vs))
        fixed(self.uv, axis)

    def refuse(self, node, why: str):
        raise _Refused(why)

    def fail(self, node, why: str):
        where = f"node {node.name!r} ({_op_name(node)})" if isinstance(node, fx.Node) else "the graph"
        raise SpecInferenceError(f"cannot infer the permutation spec at {where}: {why}; {HOW_TO}")

    # ------------------------------------------------------------ the walk
    def run(self) -> None:
        live = _live(self.trace.program.graph)
        for node in self.trace.program.graph.nodes:
            if node not in live:
                continue
            out = getattr(self, "op_" + node.op)(node)
            self.info[node] = out
            if isinstance(out, Act) and node.op == "call_function" and self.origin(node) is None:
                for d, ax in enumerate(out.axes):
                    if len(ax) == 1 and not isinstance(ax[0], Cat) and ax[0].var is not None:
                        self.carriers.append((node.name, d, ax[0].var))

    def op_placeholder(self, node):
        key = self.targets.get(node.name)
        shape = self.shape(node)
        if (key is None or shape is None or not self.meta(node).is_floating_point()
                or key not in self.state_keys and not any(k in self.state_keys for k in self.aliases.get(key, ()))):
            # inputs, integer tensors and what the state_dict does not hold (non-persistent buffers such as
            # rotary frequencies) cannot be permuted: constants
            return Act(tuple(plain(s) for s in shape)) if shape is not None else None
        vars_ = [self.uv.new(s) if s > 1 else None for s in shape]
        self.params[key] = vars_
        self.param_nodes[node] = key
        return Act(tuple(plain(s, v) for s, v in zip(shape, vars_)))

    def op_get_attr(self, node):
        return None

    def op_output(self, node):
        for i, a in enumerate(_user_outputs(node, self.trace)):
            if self.outputs is None or i in self.outputs:
                for ax in self.axes(a):
                    fixed(self.uv, ax)
        return None

    def op_call_function(self, node):
        rule = _rules.rule_for(node.target)
        inputs = node.all_input_nodes
        carries = any(variables(ax) for a in inputs for ax in self._peek(a))
        if rule is None or not carries and rule is not _rules.getitem:
            if carries:
                if self.unknown == "fix":
                    return self._give_up(node)
                self.fail(node, f"operation {_op_name(node)} on hidden units is not known to modefuse")
            return self._plain(node)
        try:
            return rule(self, node)
        except _Refused as why:
            if self.unknown == "fix":
                return self._give_up(node)
            self.fail(node, str(why))

    def _peek(self, arg):
        info = self.info.get(arg)
        if isinstance(info, Act):
            return info.axes
        if isinstance(info, Stack):
            return [ax for item in info.items for ax in item.axes]
        if isinstance(info, (tuple, list)):
            return [ax for x in info if isinstance(x, Act) for ax in x.axes]
        return ()

    def _plain(self, node):
        shape = self.out_shape(node)
        if isinstance(shape, tuple):
            return Act(tuple(plain(s) for s in shape))
        if isinstance(shape, list):
            return tuple(Act(tuple(plain(s) for s in sh)) for sh in shape)
        return None

    def _give_up(self, node):
        """`unknown="fix"`: the units reaching this node stay where they are."""
        for a in node.all_input_nodes:
            for ax in self._peek(a):
                fixed(self.uv, ax)
        return self._plain(node)


def _user_outputs(output_node, trace) -> list:
    """The graph's user outputs in order (mutated buffers come first in an exported graph's outputs)."""
    outs = list(output_node.args[0])
    n_user = len(trace.program.graph_signature.user_outputs)
    return [a for a in outs[len(outs) - n_user:] if isinstance(a, fx.Node)]


def _live(graph: fx.Graph) -> set:
    """The nodes the outputs depend on, and the placeholders (dead code constrains nothing)."""
    out_node = next(n for n in reversed(graph.nodes) if n.op == "output")
    live, todo = {out_node}, list(out_node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n not in live:
            live.add(n)
            todo.extend(n.all_input_nodes)
    return live | {n for n in graph.nodes if n.op == "placeholder"}


def _op_name(node) -> str:
    t = node.target
    return str(t) if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) else getattr(t, "__name__", str(t))


# ---------------------------------------------------------------- from classes of variables to a spec
def _resolve(w: Walker, aliases: dict[str, list[str]]) -> PermutationSpec:
    uv = w.uv
    classes = uv.classes()
    marked = {r for r, (_, m) in classes.items() if m and r != FIXED}
    names = {r: n for r, (n, _) in classes.items()}
    changed = True
    while changed:  # the parts of a produced class are produced too, and named after it
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
    bad: set[int] = set()
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
            lay = _fit(lab, uv.size[r])
            if lay is None:
                bad.add(r)
            else:
                layouts_of[(r, key, a)] = lay
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


def _pinned(w: Walker) -> list[str]:
    """Where units a layer produces were left fixed because an op does not commute with moving them."""
    seen, out = set(), []
    for node_name, why, vs in w.notes:
        if any(w.uv.marked[v] for v in vs) and why not in seen:
            seen.add(why)
            out.append(f"modefuse: some hidden units stay fixed (not permuted) at node {node_name!r}: {why}")
    return out


def _fit(lab: np.ndarray, n: int) -> Layout | None:
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


def _aliases(model: nn.Module, keys) -> dict[str, list[str]]:
    """Other state_dict names of the same tensor (tied weights: GPT-2's lm_head and wte)."""
    by_id: dict[int, list[str]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)):
        by_id.setdefault(id(t), []).append(name)
    out = {}
    for names in by_id.values():
        for n in names:
            out[n] = [m for m in names if m != n]
    return out


_CACHE: "OrderedDict[str, tuple[PermutationSpec, Trace]]" = OrderedDict()


def _cache_key(model, args, kwargs, unknown) -> str:
    """Same class, same module tree and hyper-parameters, same tensor shapes, same input shapes."""
    h = hashlib.sha1()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{model!r}|{unknown}".encode())
    for op, fn in _rules.RULES.items():  # a rule registered since changes what is inferred
        h.update(f"{op}:{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn)};".encode())
    for k, t in model.state_dict().items():
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
    for a in [*args, *sorted(kwargs), *(kwargs[k] for k in sorted(kwargs))]:
        h.update(f"{tuple(a.shape)}:{a.dtype};".encode() if isinstance(a, torch.Tensor) else repr(a).encode())
    return h.hexdigest()


def _as_args(example_input) -> tuple[tuple, dict]:
    if isinstance(example_input, dict):
        return (), dict(example_input)
    if isinstance(example_input, tuple):
        return example_input, {}
    return (example_input,), {}


def infer_spec(model: nn.Module, example_input, unknown: str = "error",
               outputs: Sequence[int] | None = None) -> PermutationSpec:
    """The permutation spec of `model`, inferred from its exported graph on `example_input`.

    Hidden units are the axes that carry the same order through the graph: every node is handed to the
    rule registered for its op family (`register_rule`), which joins the axes that must move together;
    inputs and outputs never move, and units an op does not commute with are left fixed (with a warning).

    Parameters
    ----------
    model : nn.Module
        Any module `torch.export` can trace (the zoo's, `torch.nn`'s, Hugging Face transformers').
    example_input : tensor, tuple or dict
        One batch: a tensor, a tuple of positional inputs, or a dict of keyword inputs such as
        {"input_ids": ...}.
    unknown : str
        "error" (default): an op no rule follows that reaches hidden units raises, naming the node;
        "fix": those units stay where they are.
    outputs : sequence of int, optional
        The positions, among the model's flattened outputs, whose values permutations must keep (default
        all; a Hugging Face encoder-decoder also returns the encoder's hidden states: outputs=[0] keeps
        only the logits, so that the encoder's residual stream can move).

    Returns
    -------
    PermutationSpec
        Frozen data (the graph it came from: `trace_of(spec)`). Specs are cached per architecture and
        input shape, in memory and on disk (`spec.cache`: the next process skips the export).
    """
    if unknown not in ("error", "fix"):
        raise ValueError(f"unknown must be 'error' or 'fix', got {unknown!r}")
    args, kwargs = _as_args(example_input)
    key = _cache_key(model, args, kwargs, f"{unknown}|{outputs}")
    if key in _CACHE:
        _CACHE.move_to_end(key)
        spec, trace = _CACHE[key]
    else:
        disk_key = cache.entry_key(key, model)
        cached = cache.load(disk_key)
        if cached is not None:
            spec, notes = cached
            trace = Trace(model, args, kwargs, lazy=True)
        else:
            trace = Trace(model, args, kwargs)
            state_keys = set(model.state_dict())
            aliases = _aliases(model, state_keys)
            w = Walker(trace, state_keys, unknown, aliases, None if outputs is None else set(outputs))
            w.run()
            spec, notes = _resolve(w, aliases), _pinned(w)
            cache.store(disk_key, spec, notes)
        for note in notes:
            warnings.warn(note, stacklevel=2)
        _CACHE[key] = spec, trace
        if len(_CACHE) > 32:
            _CACHE.popitem(last=False)
    if not trace.programs:
        trace.bind(model)
    spec = spec.check(model.state_dict())
    _remember(spec, trace)
    return spec


_TRACES: dict[int, Trace] = {}  # id(spec) -> the trace it was inferred from, while the spec lives


def _remember(spec: PermutationSpec, trace: Trace) -> None:
    if id(spec) not in _TRACES:
        _TRACES[id(spec)] = trace
        weakref.finalize(spec, _TRACES.pop, id(spec), None)


def trace_of(spec: PermutationSpec) -> Trace | None:
    """The traced graph `spec` was inferred from (activation probes, REPAIR and planes read it), or None
    for a spec written by hand or read from a file. Kept apart: the spec itself is plain data."""
    return _TRACES.get(id(spec))
