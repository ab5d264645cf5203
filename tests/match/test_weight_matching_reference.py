"""Weight matching against an independent reference: tests/reference_weight_matching.py is Git Re-Basin's
Algorithm 1 written from the paper alone (numpy + scipy, float64). Visiting the groups in the same order,
ours must find the same permutations on real trained models, whatever its caches and refreshes do."""

import numpy as np
import pytest
import torch

import modefuse as mf
from reference_weight_matching import apply_perms, weight_matching_reference

from modefuse.match.weight_matching import weight_matching  # noqa: E402


def _numpy(model):
    return {k: v.detach().double().numpy() for k, v in model.state_dict().items()}


def _axes_to_perm(spec, state):
    """The spec in Git Re-Basin's form: per tensor, the group on each axis (None: not permuted)."""
    axes = {k: [None] * v.ndim for k, v in state.items()}
    for g, entries in spec.groups.items():
        for k, a in entries:
            assert spec.layout(g, k, a) == mf.Layout(), "the reference takes plain axes only"
            axes[k][a] = g
    return {k: tuple(v) for k, v in axes.items()}


def _same_as_reference(a, b, spec, seed):
    ours, history = weight_matching(spec, a.state_dict(), b.state_dict(), seed=seed, tol=0)
    rng = np.random.default_rng(seed)  # the same visiting order, sweep by sweep
    names = list(spec.groups)
    pa, pb = _numpy(a), _numpy(b)
    axes = _axes_to_perm(spec, pa)
    ref, ref_history = weight_matching_reference(pa, pb, axes, spec.sizes, lambda s: list(rng.permutation(names)))
    for g in spec.groups:
        assert np.array_equal(ours[g].numpy(), ref[g]), g
    fixed = sum((pa[k] * pb[k]).sum() for k in pa if not any(axes[k]))  # ours counts permuted tensors only
    assert history[-1] + fixed == pytest.approx(ref_history[-1], rel=1e-6)
    # and the result is what both say: the permuted model's objective
    permuted = apply_perms(pb, axes, ref)
    assert history[-1] + fixed == pytest.approx(sum((pa[k] * permuted[k]).sum() for k in pa), rel=1e-6)
    return len(history)


def test_mlp_spec_is_the_one_written_by_hand(mlp400_six):
    spec = mf.infer_spec(mlp400_six[0], torch.zeros(2, 1, 28, 28))
    hand = {("layers.0.weight", 0), ("layers.0.bias", 0), ("layers.1.weight", 1)}
    assert any(set(entries) == hand for entries in spec.groups.values()), spec


@pytest.mark.parametrize("seed", [0, 1])
def test_trained_mlps_match_the_reference(mlp400_six, seed):
    a, b = mlp400_six[2], mlp400_six[3]
    spec = mf.infer_spec(a, torch.zeros(2, 1, 28, 28))
    assert _same_as_reference(a, b, spec, seed) >= 3  # several sweeps: the cached terms were refreshed


def test_trained_cnns_match_the_reference(cnn_pair):
    a, b = cnn_pair
    spec = mf.infer_spec(a, torch.zeros(2, 1, 28, 28))
    _same_as_reference(a, b, spec, seed=0)


def test_refreshed_terms_equal_recomputed_ones(mlp400_six):
    """The low-rank refresh of a cached term equals the term computed afresh."""
    from modefuse.match.scoreterms import ScoreTerms
    a, b = mlp400_six[0], mlp400_six[1]
    spec = mf.infer_spec(a, torch.zeros(2, 1, 28, 28))
    perms = {h: torch.arange(n) for h, n in spec.sizes.items()}
    cached = ScoreTerms(spec, a.state_dict(), b.state_dict(), budget=2**30)
    for h in spec.groups:
        for k, ax in spec.groups[h]:
            cached(h, k, ax, perms)  # every term in the cache
    gen = torch.Generator().manual_seed(0)
    for step in range(6):  # move a few units of every group at a time
        for h, n in spec.sizes.items():
            i = torch.randperm(n, generator=gen)[:3]
            p = perms[h].clone()
            p[i] = p[i.roll(1)]
            perms[h] = p
        fresh = ScoreTerms(spec, a.state_dict(), b.state_dict(), budget=0)
        for h in spec.groups:
            for k, ax in spec.groups[h]:
                assert torch.allclose(cached(h, k, ax, perms), fresh(h, k, ax, perms), rtol=1e-4, atol=1e-4), (h, k)
    assert any(cached.refreshes.values())  # the refresh path was taken


def test_assignment_solvers_agree_on_weight_matchings_scores(mlp400_six, cnn_pair, monkeypatch):
    """lapx (the default where installed) and scipy find the same permutation on every score matrix weight
    matching solves on trained models, and the alignment is the same with scipy alone."""
    from modefuse.match import solvers, weight_matching as wm
    assert solvers._lapjv is not None, "lapx is a dependency (pyproject.toml): pip install -e ."
    scores = []

    def record(score, maximize=True):
        scores.append(score.clone())
        return solvers.assignment(score, maximize)

    monkeypatch.setattr(wm, "assignment", record)
    results = {}
    for a, b in ((mlp400_six[2], mlp400_six[3]), cnn_pair):
        spec = mf.infer_spec(a, torch.zeros(2, 1, 28, 28))
        results[id(a)] = weight_matching(spec, a.state_dict(), b.state_dict(), seed=0, tol=0)[0]
    assert len(scores) > 10
    for s in scores:
        assert torch.equal(solvers.assignment(s, solver="lapx"), solvers.assignment(s, solver="scipy"))
    s = torch.randn(300, 300, dtype=torch.float64)  # a cost to minimize, too
    assert torch.equal(solvers.assignment(s, maximize=False, solver="lapx"),
                       solvers.assignment(s, maximize=False, solver="scipy"))
    monkeypatch.setattr(wm, "assignment", solvers.assignment)
    monkeypatch.setattr(solvers, "_lapjv", None)  # an install without lapx: scipy
    for a, b in ((mlp400_six[2], mlp400_six[3]), cnn_pair):
        spec = mf.infer_spec(a, torch.zeros(2, 1, 28, 28))
        alone = weight_matching(spec, a.state_dict(), b.state_dict(), seed=0, tol=0)[0]
        assert all(torch.equal(alone[g], results[id(a)][g]) for g in spec.groups)
    with pytest.raises(ImportError, match="pip install lapx"):
        solvers.assignment(s, solver="lapx")
    for bad in (float("nan"), float("inf"), -float("inf")):
        s[3, 4] = bad
        with pytest.raises(ValueError, match="NaN or infinite entries"):
            solvers.assignment(s)
