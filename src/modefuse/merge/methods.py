"""The fusion methods, one small unit each, chosen by name from a registry, and the `Fusion` they return.

"average" mixes the weights as they are; the transport-based methods ("otfusion", "wasserstein",
"gromov") each name a `CouplingRule` for the loop they share (`couplings.Fuser`). Adding a method is
one function and one `@register_fuser` line; the test suite runs every registered method through the
same contract tests (permuted copies fuse back to the model, the function kept).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ArchitectureMismatchError, ModefuseError
from ..registry import Registry, first_line
from ..checks import positive_int
from ..match.align import align
from ..match.blockmatch import inner_groups
from ..match.probe import example_for, taps, unit_activations
from ..spec.infer import infer_spec
from ..spec.permutation_spec import PermutationSpec
from ..spec.transport import invert
from ..storage.statedict import check_same_architecture
from ..zoo import models as zoo
from .couplings import CouplingRule, Fuser, mix_tensors


@dataclass
class Fusion:
    """The result of `fuse`: the fused model, and per group the K couplings (n_target x n_i, mass 1) that produced it.

    The couplings say which units of each model went into which unit of the fused model; `repair`
    takes them to give the fused units their endpoints' statistics.

    Attributes
    ----------
    model : nn.Module
        The fused model, of model 0's architecture at the target widths.
    couplings : dict of str to list of Tensor
        Per group, one transport plan per model (target units x that model's units, mass 1); empty for
        "average"; for "zipit", each fused unit's weights over model i's units divided by lambda_i n_target
        (what `repair` reads: the fused unit gets its cluster's average statistics).
    spec : PermutationSpec or None
        The fused model's spec (None for "average").
    method : str
        The fusion method's name.
    coupling_changes : list of float
        The largest coupling change per sweep (empty for "average").
    """

    model: nn.Module
    couplings: dict[str, list[torch.Tensor]]
    spec: PermutationSpec | None
    method: str
    coupling_changes: list[float] = field(default_factory=list)  # largest coupling change per sweep

    @property
    def history(self) -> list[float]:
        """Deprecated name of `coupling_changes` (`history` is the objective per sweep in `Alignment`)."""
        warnings.warn("Fusion.history is now Fusion.coupling_changes (the old name goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        return self.coupling_changes


ACTIVATION_LIMIT = 500  # examples read by the activation cost and activation matching


@dataclass(frozen=True)
class FusionProblem:
    """What every fusion method is given: the models, their checked states and weights, and the options."""

    models: Sequence[nn.Module]
    states: Sequence[Mapping[str, torch.Tensor]]
    lam: list[float]
    widths: Mapping[str, int] | Sequence[int] | None = None
    data: object = None
    example_input: object = None
    eps: float | None = None
    max_sweeps: int = 20
    tol: float = 1e-7
    alpha_h: float = 1.0
    offdiag_scale: float = 1.0
    cost: str = "weight"
    outgoing: bool = True
    limit: int | None = None  # None: each use's default (ACTIVATION_LIMIT)
    progress: bool = False
    spec: PermutationSpec | None = None  # a given spec (hand-written, edited) instead of inferring one


@dataclass(frozen=True)
class FusionMethod:
    name: str
    run: Callable[[FusionProblem], Fusion]
    summary: str
    aligns: bool  # whether it matches units before mixing (vanilla averaging does not)
    needs_data: bool = False  # whether it reads the models' activations whatever the cost


FUSERS: Registry[FusionMethod] = Registry("fusion method")


def register_fuser(name: str, summary: str = "", aligns: bool = True, needs_data: bool = False):
    """Decorator: `fn(problem) -> Fusion` becomes fusion method `name` of `mf.fuse`.

    Adds a method without touching `fuse`: `fuse(models, method=name)` checks the options and the
    models' tensors and calls `fn` with a `FusionProblem` (the models, their state_dicts, the normalized
    weights lambda_i, and the options of `fuse`, `cost` resolved to "weight" or "activation").

    Parameters
    ----------
    name : str
        The method's name for `fuse(method=...)` and the command line; an existing name is replaced.
    summary : str
        A one-line description kept in the registry (default: the first line of `fn`'s docstring).
    aligns : bool
        The method matches the models' units before mixing them (the contract tests then ask it to fuse
        permuted copies back; the command line loads training data for its activation cost).
    needs_data : bool
        The method reads activations or input statistics whatever the cost: `fuse` asks for `data`.

    Returns
    -------
    callable
        The decorator; it registers `fn` and returns it unchanged.
    """
    return FUSERS.register(name, lambda fn: FusionMethod(name, fn, summary or first_line(fn), aligns, needs_data))


def get_fuser(name: str) -> FusionMethod:
    return FUSERS.unit(name)


@register_fuser("average", aligns=False)
def average(p: FusionProblem) -> Fusion:
    """Vanilla averaging: sum_i lambda_i W_i, tensor by tensor, no alignment (FedAvg's aggregate)."""
    if p.widths is not None:
        raise ModefuseError("vanilla averaging cannot change widths; use method='wasserstein'")
    for i, s in enumerate(p.states[1:], 1):
        check_same_architecture(p.states[0], s, "model 0", f"model {i}")
    return Fusion(build_fused(p.models[0], mix_states(p.states, p.lam), None, None), {}, None, "average")


@register_fuser("otfusion")
def otfusion(p: FusionProblem) -> Fusion:
    """OTFusion (Singh & Jaggi 2020): each model coupled to model 0, which stays the target."""
    return by_transport(p, "otfusion", CouplingRule(free_target=False, recurrent=False))


@register_fuser("wasserstein")
def wasserstein(p: FusionProblem) -> Fusion:
    """Wasserstein barycenter (Akash et al. 2023): couplings and a free barycenter alternate per group, any width."""
    return by_transport(p, "wasserstein", CouplingRule(free_target=True, recurrent=False))


@register_fuser("gromov")
def gromov(p: FusionProblem) -> Fusion:
    """Gromov-Wasserstein barycenter (Akash et al. 2023): as wasserstein, with the hidden-to-hidden
    matrices of recurrent layers in the coupling's cost."""
    return by_transport(p, "gromov", CouplingRule(free_target=True, recurrent=True))


def by_transport(p: FusionProblem, name: str, rule: CouplingRule) -> Fusion:
    """The loop every transport-based method shares: specs, couplings group by group under `rule`, the
    fused state accumulated one tensor at a time."""
    data = p.data
    x, specs = problem_specs(p, need_example=p.cost == "activation")
    models, states, moved = _align_heads(p, specs, x)
    sizes = target_sizes(specs[0], p.widths)
    if not rule.free_target and sizes != specs[0].sizes:
        raise ModefuseError(f"{name} keeps model 0 as the target; to fuse into other widths use 'wasserstein'")
    acts = None
    if p.cost == "activation":
        acts = []
        for m, sp in zip(models, specs):
            unit_nodes, trace = taps(sp, m, x, data)
            acts.append(unit_activations(m, trace, unit_nodes, data, limit=p.limit or ACTIVATION_LIMIT))
    fuser = Fuser(specs, states, sizes, p.lam, rule, p.eps, p.alpha_h, p.outgoing, acts)
    changes = fuser.run(p.max_sweeps, p.tol, p.progress, desc=f"fusing ({name})")
    fused = build_fused(models[0], fuser.fused_state(), specs[0], sizes)
    if sizes == specs[0].sizes:
        target_spec = specs[0]
    else:
        target_spec = infer_spec(fused, x) if p.spec is None else replace(p.spec, sizes={}).check(fused.state_dict())
    couplings = {g: [onto_own_units(pi, perms, g) for pi, perms in zip(plans, moved)]
                 for g, plans in fuser.couplings.items()}
    return Fusion(fused, couplings, target_spec, name, changes)


def onto_own_units(pi: torch.Tensor, perms, g: str) -> torch.Tensor:
    """A coupling found for a model aligned first (`align_to_first`'s permutations `perms`, None if it was
    not moved) as a map onto that model's own units."""
    return pi if perms is None else pi[:, invert(perms[g])]


def problem_specs(p: FusionProblem, need_example: bool) -> tuple[object, list[PermutationSpec]]:
    """(an example input for model 0, or None when neither tracing nor `need_example` asks for one; each
    model's spec, inferred or the given one), the models checked to be of one architecture."""
    x = example_for(p.models[0], p.example_input, p.data) if p.spec is None or need_example else None
    if p.spec is None:
        specs = [infer_spec(m, example_for(m, p.example_input, p.data) if i else x) for i, m in enumerate(p.models)]
    else:
        specs = [_given_spec(p.spec, s, p.states[0]) for s in p.states]
    _check_compatible(p.states, specs)
    return x, specs


def _align_heads(p: FusionProblem, specs, x) -> tuple[list[nn.Module], list, list]:
    """Models with attention heads, aligned to model 0 first (weight or activation matching, which solve the
    heads with the order inside them; the coupling loop takes one group at a time): (models, states, the
    permutation applied to each, None where none was). Other models are left as they are."""
    if not any(inner_groups(specs[0], g) for g in specs[0].groups):
        return list(p.models), list(p.states), [None] * len(p.models)
    return align_to_first(p, specs, x)


def align_to_first(p: FusionProblem, specs, x, limit: int | None = None) -> tuple[list[nn.Module], list, list]:
    """Every model aligned to model 0 by weight or activation matching (as `p.cost`; activations on `limit`
    examples, default `p.limit` or ACTIVATION_LIMIT), models of model 0's widths only: (models, states, the
    permutation applied to each, None for model 0)."""
    k, spec = len(p.models), specs[0]
    if k < 2 or any(sp.sizes != spec.sizes for sp in specs[1:]):
        return list(p.models), list(p.states), [None] * k
    method = "activation" if p.cost == "activation" else "weight"
    models, states, moved = [p.models[0]], [p.states[0]], [None]
    for m in p.models[1:]:
        res = align(p.models[0], m, method=method, data=p.data, example_input=x, spec=spec,
                    limit=limit or p.limit or ACTIVATION_LIMIT)
        models.append(res.model)
        states.append(res.model.state_dict())
        moved.append(res.perms)
    return models, states, moved


def mix_states(states: Sequence[Mapping[str, torch.Tensor]], lam: list[float]) -> dict[str, torch.Tensor]:
    """sum_i lam_i states_i, tensor by tensor."""
    return {k: mix_tensors((s[k] for s in states), lam) for k in states[0]}


def _given_spec(spec: PermutationSpec, state, state0) -> PermutationSpec:
    """The given spec checked against one model: with its sizes where the model has model 0's shapes, else
    with the sizes read off this model (a model of another width)."""
    same = all(state[k].shape == v.shape for k, v in state0.items() if k in state)
    return (spec if same else replace(spec, sizes={})).check(state)


def target_sizes(spec: PermutationSpec, widths) -> dict[str, int]:
    if widths is None:
        return dict(spec.sizes)
    if isinstance(widths, Mapping):
        unknown = [g for g in widths if g not in spec.sizes]
        if unknown:
            raise ModefuseError(f"no group {unknown[0]!r} in the model; its groups are: {', '.join(spec.sizes)}")
        sizes = {g: widths.get(g, n) for g, n in spec.sizes.items()}
    else:
        widths = list(widths)
        if len(widths) != len(spec.sizes):
            raise ModefuseError(f"widths has {len(widths)} entries but the model has {len(spec.sizes)} groups: "
                                f"{', '.join(spec.sizes)}")
        sizes = dict(zip(spec.sizes, widths))
    return {g: positive_int(w, f"the width of group {g!r}") for g, w in sizes.items()}


def _check_compatible(states, specs) -> None:
    """Same tensors and groups; shapes may differ only along grouped axes."""
    for i in range(1, len(states)):
        if list(specs[i].groups) != list(specs[0].groups):
            raise ArchitectureMismatchError(f"model {i} has hidden-unit groups {list(specs[i].groups)}, model 0 "
                                            f"{list(specs[0].groups)}: the architectures differ")
        for key, v in states[0].items():
            if key not in states[i]:
                raise ArchitectureMismatchError(f"architectures differ: model 0 has tensor {key!r}, model {i} lacks it")
            grouped = {a for a, _ in specs[0].axes_of.get(key, [])}
            w = states[i][key]
            if w.dim() != v.dim() or any(w.shape[d] != v.shape[d] for d in range(v.dim()) if d not in grouped):
                raise ArchitectureMismatchError(f"architectures differ at tensor {key!r}: {tuple(v.shape)} in "
                                                f"model 0, {tuple(w.shape)} in model {i}")
        extra = [k for k in states[i] if k not in states[0]]
        if extra:
            raise ArchitectureMismatchError(f"architectures differ: model {i} has tensor {extra[0]!r}, model 0 lacks it")


def build_fused(model0: nn.Module, state: dict[str, torch.Tensor], spec, sizes) -> nn.Module:
    """A module of model 0's architecture holding `state`, at the target widths.

    Zoo MLPs and single-layer RNN/LSTMs are rebuilt from their architecture with the new widths (so
    their checkpoints rebuild them); any other module is copied and its tensors replaced, the layers'
    size attributes updated (its checkpoint then loads with mf.load(path, model=...)).
    """
    if spec is None or sizes == spec.sizes:
        out = copy.deepcopy(model0)
        out.load_state_dict(state)
        return out
    arch = getattr(model0, "arch", None)
    kw = None
    if arch and arch["name"] == "mlp":
        kw = {**arch["kwargs"], "widths": [sizes[g] for g in spec.groups]}
    elif arch and arch["name"] in ("rnn", "lstm") and arch["kwargs"].get("num_layers", 1) == 1:
        kw = {**arch["kwargs"], "hidden": sizes[next(iter(spec.groups))]}
    if kw is not None:
        first = next(model0.parameters())
        out = zoo.build(arch["name"], **kw).to(device=first.device, dtype=first.dtype)
        out.load_state_dict(state)
        return out
    if any(isinstance(m, nn.RNNBase) for m in model0.modules()):
        raise ModefuseError("fusing recurrent layers into other widths is supported for the zoo's RNN and LSTM")
    out = copy.deepcopy(model0)
    for name, module in out.named_modules():
        prefix = f"{name}." if name else ""
        for pname in list(module._parameters):
            if module._parameters[pname] is not None:
                module._parameters[pname] = nn.Parameter(state[prefix + pname].clone())
        for bname in list(module._buffers):
            if module._buffers[bname] is not None:
                module._buffers[bname] = state[prefix + bname].clone()
        _resize_attributes(module)
    out.arch = None  # the zoo's width multipliers cannot describe per-group widths
    return out


def _resize_attributes(m: nn.Module) -> None:
    """Make a layer's size attributes agree with its (replaced) weights."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = w.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.num_features = m.running_mean.shape[0] if m.running_mean is not None else w.shape[0]
    elif isinstance(m, nn.GroupNorm):
        m.num_channels = w.shape[0]
        if m.num_groups != 1:
            m.num_groups = m.num_channels
    elif isinstance(m, nn.LayerNorm) and w is not None:
        m.normalized_shape = tuple(w.shape)
