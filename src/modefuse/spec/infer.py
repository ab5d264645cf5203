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
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from . import rules as _rules
from . import cache
from .permutation_spec import PermutationSpec
from .resolve import pinned_notes, resolve
from .trace import Trace, remember
from .walker import Walker


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
            spec, notes = resolve(w, aliases), pinned_notes(w)
            cache.store(disk_key, spec, notes)
        for note in notes:
            warnings.warn(note, stacklevel=2)
        _CACHE[key] = spec, trace
        if len(_CACHE) > 32:
            _CACHE.popitem(last=False)
    if not trace.programs:
        trace.bind(model)
    spec = spec.check(model.state_dict())
    remember(spec, trace)
    return spec
