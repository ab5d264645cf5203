"""The walk over an exported graph: each live node is handed to the rule of its op family (`rules.py`).

`RuleView` is what rules see: the axes of every node so far (`Act`, or a `Stack` of a recurrent layer's
states), the unit variables of each parameter axis (`units.UnitVars`), and where units were pinned.
`Walker` is the walk itself: placeholders become parameter axes, outputs are fixed, every call goes
to its rule, and an op no rule follows either fails naming the node or (unknown="fix") fixes the units.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.fx as fx

from . import rules as _rules
from .dims import Axis, Cat, axis_size, fixed, plain, variables
from ..errors import SpecInferenceError
from .trace import HOW_TO, Trace
from .units import FIXED, UnitVars

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


class Refused(Exception):
    """A rule's "this op does not commute with these units" (an error, or the units fixed with unknown="fix")."""


class RuleView:
    """What a rule reads and joins: each node's axes so far, the unit variables of the parameters' axes,
    and the notes of units left fixed. Rules get the walker and call these methods."""

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
        raise Refused(why)

    def fail(self, node, why: str):
        where = f"node {node.name!r} ({_op_name(node)})" if isinstance(node, fx.Node) else "the graph"
        raise SpecInferenceError(f"cannot infer the permutation spec at {where}: {why}; {HOW_TO}")


class Walker(RuleView):
    """Walks an exported graph in order, handing each live node to the rule of its op family."""

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
        except Refused as why:
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
