"""Alignment of a pair: the hidden-unit permutations that put `model` into `reference`'s basin.

The methods (`methods.ALIGNERS`, one unit each) over one permutation spec:
- "weight": weight matching (Ainsworth et al. 2022), coordinate descent over groups in random order,
  one linear assignment per step, until a sweep improves nothing;
- "activation": activation matching / neuron alignment (Tatro et al. 2020): correlation of
  standardized unit activations on data where the next layer reads them, one assignment per group;
- "weight_cov": covariance-weighted weight matching (Ferbach et al. 2024): layer by layer from the
  inputs, incoming weights compared in the metric of the second moment E[x x^T] of the layer's inputs
  on data: directions the data never excites cost nothing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..errors import ModefuseError
from ..spec.infer import infer_spec
from ..spec.permutation_spec import PermutationSpec
from ..spec.transport import permute_tensor
from ..storage.statedict import check_finite, check_same_architecture
from .methods import AlignProblem, get_aligner
from .probe import example_for


@dataclass
class Alignment:
    """The result of `align`: the model permuted toward the reference, and the permutations applied.

    The permuted model computes the same function as the input model; only the order of its hidden units
    changed, so interpolating it with the reference (`interpolate`) or fusing it is meaningful.

    Attributes
    ----------
    model : nn.Module
        A permuted copy of the input model (the input is unchanged).
    perms : dict of str to LongTensor
        Per group of `spec`: unit i of `model` is unit perm[i] of the input model
        (`permute(state, spec, perms)` applies them to a state_dict).
    spec : PermutationSpec
        The checked spec the permutations act on (inferred, or the one given).
    method : str
        The alignment method's name.
    history : list of float
        Weight matching ("weight", "weight_cov"): the objective after each sweep; empty for "activation".
    """

    model: nn.Module
    perms: dict[str, torch.Tensor]
    spec: PermutationSpec
    method: str
    history: list[float] = field(default_factory=list)  # weight matching: objective after each sweep


def align(reference: nn.Module, model: nn.Module, method: str = "weight", example_input=None, data=None,
          seed: int = 0, spec: PermutationSpec | None = None, max_sweeps: int = 100, tol: float = 1e-3,
          limit: int = 5000) -> Alignment:
    """Permute `model`'s hidden units toward `reference`; neither input is changed.

    Weight matching (Ainsworth et al. 2022) maximizes sum_k <W_ref[k], P_out W[k] P_in^T> over the
    permutations of every group by exact coordinate descent; activation matching (Tatro et al. 2020)
    solves one assignment per group on the correlation of the units' activations on data; "weight_cov"
    (Ferbach et al. 2024) matches each layer's incoming weights, from the inputs on, in the metric of
    its inputs' second moment E[x x^T] on data.

    Parameters
    ----------
    reference : nn.Module
        Model A, whose unit order is kept.
    model : nn.Module
        Model B, of the same architecture, whose units are permuted.
    method : str
        "weight", "activation" or "weight_cov" (or a method registered with `register_aligner`).
    example_input : tensor, tuple or dict, optional
        One batch to trace the model with; default the first batch of `data`, or a zoo model's shape.
    data : batches, Dataset or tensor, optional
        Inputs for the methods that read activations ("activation", "weight_cov"); `limit` examples.
    seed : int
        Order of the groups in weight matching's sweeps.
    spec : PermutationSpec, optional
        A spec to use instead of the inferred one (hand-written, edited); it is not changed.
    max_sweeps, tol : int, float
        Weight matching stops after `max_sweeps` sweeps, or when one raises the objective by less than
        `tol` times its value (0: only when no permutation changes; on two trained MLPs the last 10 of
        16 exact sweeps add 0.2% to the objective and leave the loss barrier as it is).
    limit : int
        Examples of `data` read by the activation-based methods.

    Returns
    -------
    Alignment
        The permuted copy of `model` (the same function), the permutations, the spec and, for weight
        matching, the objective after each sweep.
    """
    aligner = get_aligner(method)
    ref_state, state = reference.state_dict(), model.state_dict()
    check_same_architecture(ref_state, state, "the reference model", "the model to align")
    check_finite(ref_state, "the reference model")
    check_finite(state, "the model to align")
    if aligner.needs_data and data is None:
        raise ModefuseError(f"method {method!r} needs data: pass data= (a few thousand training inputs)")
    spec = (spec or infer_spec(reference, example_for(reference, example_input, data))).check(ref_state)
    perms, history = aligner.run(AlignProblem(reference, model, spec, ref_state, state, example_input, data, seed,
                                              max_sweeps, tol, limit))
    return Alignment(permuted_copy(model, spec, perms), perms, spec, method, history)


def permuted_copy(model: nn.Module, spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` with `perms` applied: each permuted tensor is made once, in place of its copy."""
    axes_of = spec.axes_of
    memo: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for k, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            if k in axes_of and id(t) not in memo:
                new = permute_tensor(t.detach(), k, axes_of[k], spec, perms)
                memo[id(t)] = nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new
    return copy.deepcopy(model, memo)
