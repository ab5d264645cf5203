"""A model's exported graph (`torch.export`), kept apart from the spec inferred from it.

`Trace` exports once per batch size and maps graph nodes to state_dict keys; activation probes,
REPAIR and planes read it through `trace_of(spec)`. A spec written by hand or read from a file has
no trace: the spec itself is plain data.
"""
from __future__ import annotations

import functools
import warnings
import weakref
from typing import NamedTuple

import torch
import torch.fx as fx
from torch import nn

from ..errors import SpecInferenceError
from .permutation_spec import PermutationSpec

HOW_TO = ("teach modefuse the op with mf.register_rule, or write the spec by hand as plain data: "
          "mf.PermutationSpec(groups={'name': [('layer.weight', 0), ...]}) and pass it as spec= "
          "(see modefuse/spec/permutation_spec.py; PermutationSpec.from_axes builds one per tensor)")

class Trace:
    """A model's exported program and the maps between its graph and the model's state_dict."""

    def __init__(self, model: nn.Module, args: tuple, kwargs: dict, lazy: bool = False):
        """`lazy`: export on first use of the graph (a spec from the on-disk cache needs none for weights)."""
        self.args, self.kwargs = args, kwargs
        self.type = type(model)
        self.programs: dict[int, torch.export.ExportedProgram] = {}
        self._cut: dict[tuple, fx.GraphModule] = {}  # tap's graphs, per (nodes, batch size)
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

    def _cut_at(self, ep, node_names: list[str], batch: int) -> fx.GraphModule:
        """The exported graph up to `node_names`, returning their values."""
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
        return fx.GraphModule({}, g)

    def at_batch(self, model: nn.Module, batch: int) -> torch.export.ExportedProgram:
        """The program exported at another batch size (shapes are concrete in an exported graph)."""
        if batch not in self.programs:
            args = tuple(_resize(a, batch) for a in self.args)
            kwargs = {k: _resize(v, batch) for k, v in self.kwargs.items()}
            self.programs[batch] = self._export(model, args, kwargs)
        return self.programs[batch]

    def tap(self, model: nn.Module, node_names: list[str], batch: int):
        """A function x -> outputs of `node_names` on `model`'s own weights (same architecture).

        The graph cut at those nodes is kept per (nodes, batch size): it is the architecture's, and REPAIR
        taps one layer after another, each time with the weights as they are then."""
        ep = self.at_batch(model, batch)
        key = (tuple(node_names), batch)
        if key not in self._cut:
            self._cut[key] = self._cut_at(ep, node_names, batch)
        gm = self._cut[key]
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

        names = list(self.kwargs)  # keyword inputs come after the positional ones, in the traced order

        def run(x):
            args = list(fixed_args)
            if isinstance(x, dict):
                missing = [k for k in names if k not in x]
                if missing:
                    raise SpecInferenceError(f"the data lacks the keyword input {missing[0]!r} the model was "
                                             f"traced with (it has {', '.join(x)})")
                values = [x[k] for k in names]
            else:
                values = x if isinstance(x, tuple) else (x,)
            for i, v in zip(user, values):
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

    def node(self, name: str) -> fx.Node:
        """The graph node named `name`."""
        return next(n for n in self.program.graph.nodes if n.name == name)

    @functools.cached_property
    def parameter_uses(self) -> dict[str, int]:
        """Per parameter key, how many graph nodes read it (a tied weight is read by several)."""
        params = self.program.graph_signature.inputs_to_parameters
        return {params[n.name]: len(n.users) for n in self.program.graph.nodes if n.name in params}

    @functools.cached_property
    def read_nodes(self) -> frozenset[str]:
        """The nodes a linear, convolution or addmm layer reads (the same graph at every batch size)."""
        return frozenset(la.input for la in self.layers())

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


def conv_geometry(node, spatial: int) -> tuple[tuple, tuple, tuple, int] | None:
    """(stride, padding, dilation, groups) of a convolution node with `spatial` spatial dims, each a tuple;
    None where a layer's input patches cannot be read as unfold does (string padding, transposed)."""
    packet = node.target.overloadpacket
    if packet is torch.ops.aten.convolution:
        stride, padding, dilation, transposed, _, groups = node.args[3:9]
        if transposed:
            return None
    else:
        names = ("stride", "padding", "dilation", "groups")
        given = dict(zip(names, node.args[3:]), **node.kwargs)
        stride, padding, dilation, groups = (given.get(k, d) for k, d in zip(names, (1, 0, 1, 1)))
    if isinstance(padding, str):
        return None

    def full(v):
        return tuple(v) * (spatial if len(tuple(v)) == 1 else 1) if isinstance(v, (list, tuple)) else (v,) * spatial
    return full(stride), full(padding), full(dilation), int(groups)


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


_TRACES: dict[int, Trace] = {}  # id(spec) -> the trace it was inferred from, while the spec lives


def remember(spec: PermutationSpec, trace: Trace) -> None:
    if id(spec) not in _TRACES:
        _TRACES[id(spec)] = trace
        weakref.finalize(spec, _TRACES.pop, id(spec), None)


def trace_of(spec: PermutationSpec) -> Trace | None:
    """The traced graph `spec` was inferred from (activation probes, REPAIR and planes read it), or None
    for a spec written by hand or read from a file. Kept apart: the spec itself is plain data."""
    return _TRACES.get(id(spec))
