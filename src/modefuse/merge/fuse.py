"""`mf.fuse`: K models into one by a fusion method chosen by name (`methods.FUSERS`: averaging, OTFusion,
Wasserstein and Gromov-Wasserstein barycenters, RegMean, ZipIt!); the transport-based ones share the coupling
loop of `couplings.py`, whose docstring gives the algorithm; RegMean and ZipIt! are a module each."""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

from torch import nn

from ..checks import nonneg_float, positive_float, positive_int
from ..errors import ModefuseError
from ..storage.statedict import check_finite
from ..spec.permutation_spec import PermutationSpec
from . import regmean as _regmean, zipit as _zipit  # noqa: F401 (register "regmean", "zipit")
from .methods import Fusion, FusionProblem, get_fuser

COSTS = ("auto", "weight", "activation")


def fuse(models: Sequence[nn.Module], method: str = "auto", weights: Sequence[float] | None = None,
         widths: Mapping[str, int] | Sequence[int] | None = None, data=None, example_input=None,
         eps: float | None = None, max_sweeps: int = 20, tol: float = 1e-7, alpha_h: float = 1.0,
         cost: str = "auto", outgoing: bool = True, limit: int | None = None, progress: bool = False,
         spec: PermutationSpec | None = None, offdiag_scale: float = 1.0, iters: int | None = None) -> Fusion:
    """Fuse `models` (same architecture; widths may differ for "wasserstein"/"gromov") into one.

    Each group's units are coupled to the target's by optimal transport on C[j, j'] = ||F_target[j] -
    F_i[j']||^2 (features F: a unit's transported incoming weights, or its activations), and the fused
    weights are the barycenter sum_i lambda_i n pi_i W_i (OTFusion, Singh & Jaggi 2020; Wasserstein
    barycenter fusion, Akash et al. 2023). "average" mixes the weights as they are, sum_i lambda_i W_i.
    Models with attention heads are first aligned to model 0 (weight or activation matching, as `cost`),
    which solves the heads with the order inside them; `couplings` still map onto each model's own units.

    Parameters
    ----------
    models : sequence of nn.Module
        The K >= 1 models to fuse.
    method : str
        "auto" (default): "regmean" when `data` is given and the models share model 0's widths and
        `widths` is not given (the best one-shot fusion of REPORT.md's MLPs and VGG11), else
        "wasserstein"; or "average" (no alignment), "otfusion" (model 0 stays the target), "wasserstein" (a free
        barycenter, any width), "gromov" (as "wasserstein", with recurrent layers' hidden-to-hidden
        matrices in the cost), "regmean" (aligned to model 0, then each layer the least-squares fit of
        the models' outputs on their inputs; needs `data`), "zipit" (all models' units clustered by
        activation correlation, merges inside a model allowed, any target width; needs `data`), or a
        method registered with `register_fuser`.
    weights : sequence of float, optional
        lambda_i, non-negative with a positive sum, normalized to sum to 1 (default uniform).
    widths : dict or sequence of int, optional
        Target units per group: a dict (groups it leaves out keep model 0's width), or a list in the
        order of the spec's groups (default: model 0's).
    data : batches, Dataset or tensor, optional
        Training examples for the activation cost.
    example_input : tensor, tuple or dict, optional
        One batch to trace the models with; default the first batch of `data`, or a zoo model's shape.
    eps : float, optional
        Sinkhorn regularization relative to the largest cost (default: exact OT).
    max_sweeps : int
        At most this many sweeps over the groups (and barycenter updates per group).
    tol : float
        The sweeps stop when no coupling entry moves by this much (`max_sweeps` and `tol` are the names
        `mf.align` uses).
    alpha_h : float
        Weight of the hidden-to-hidden term of "gromov" (1: counted like the other incoming weights).
    cost : {"auto", "weight", "activation"}
        "weight" (units compared by their transported incoming weights: the papers' cost, no data
        needed), "activation" (by their activations on `limit` examples of `data`: OTFusion's
        activation-based metric) or "auto": activation when `data` is given, else weight (activations
        fuse 4 and 6 MLPs 10-15 points better, REPORT.md).
    outgoing : bool
        The weight cost also compares each unit's outgoing weights (the next layer's columns,
        transported by that layer's coupling of the previous sweep); better on every MLP and LSTM of
        REPORT.md, so on by default; False is the papers' cost.
    limit : int, optional
        Examples of `data` read: by the activation cost and by activation matching (default 500), by
        "zipit" (2000) and by "regmean" for its alignment and Gram matrices (5000: one cheap pass per model;
        four MLPs fuse 0.7 points better than on 500).
    progress : bool
        A progress bar over the sweeps.
    spec : PermutationSpec, optional
        A permutation spec to use instead of inferring one (hand-written for a model export cannot
        trace, or edited); models of other widths take it with their own sizes.
    offdiag_scale : float
        "regmean": the factor a in [0, 1] on the off-diagonal entries of each layer's input Gram matrix
        (Jin et al. 2023; 1 keeps the exact least-squares fit, smaller moves it towards averaging).
    iters : int, optional
        The old name of `max_sweeps` (deprecated: it warns).

    Returns
    -------
    Fusion
        The fused model, the couplings per group, the target's spec and the largest coupling change
        per sweep.
    """
    if method == "auto":
        method = auto_method(models, data, widths)
    fuser = get_fuser(method)
    if cost not in COSTS:
        raise ModefuseError(f"unknown fusion cost {cost!r}; use one of {', '.join(COSTS)}")
    if not models:
        raise ModefuseError("fuse needs at least one model")
    if eps is not None:
        positive_float(eps, "eps (Sinkhorn regularization; omit it for exact OT)")
    if iters is not None:
        warnings.warn("fuse(iters=) is now fuse(max_sweeps=) (the old name goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        max_sweeps = iters
    max_sweeps = positive_int(max_sweeps, "max_sweeps")
    limit = None if limit is None else positive_int(limit, "limit")
    tol = nonneg_float(tol, "tol")
    alpha_h = nonneg_float(alpha_h, "alpha_h")
    offdiag_scale = nonneg_float(offdiag_scale, "offdiag_scale")
    if offdiag_scale > 1:
        raise ModefuseError(f"offdiag_scale scales the Gram matrices' off-diagonal entries: a number in [0, 1], "
                            f"got {offdiag_scale}")
    if fuser.needs_data and data is None:
        raise ModefuseError(f"method {method!r} reads the models' activations on data: pass data= (training "
                            f"examples; labels are not used)")
    if cost == "activation" and data is None:
        raise ModefuseError("cost='activation' compares units by their activations: pass data= (training examples)")
    if cost == "auto":
        cost = "activation" if data is not None else "weight"
    lam = _weights(weights, len(models))
    states = [m.state_dict() for m in models]
    for i, s in enumerate(states):
        check_finite(s, f"model {i}")
    return fuser.run(FusionProblem(models, states, lam, widths, data, example_input, eps, max_sweeps, tol, alpha_h,
                                   offdiag_scale, cost, outgoing, limit, progress, spec))


def _weights(weights, k: int) -> list[float]:
    if weights is None:
        return [1.0 / k] * k
    w = [float(v) for v in weights]
    if len(w) != k or any(v < 0 for v in w) or sum(w) <= 0:
        raise ModefuseError(f"weights must be {k} non-negative numbers with a positive sum, got {weights}")
    return [v / sum(w) for v in w]


def auto_method(models, data, widths) -> str:
    """RegMean where it applies (data, one width, model 0's widths), else the Wasserstein barycenter."""
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in models]
    one_width = all(s == shapes[0] for s in shapes[1:])
    return "regmean" if data is not None and widths is None and one_width and len(models) > 1 else "wasserstein"
