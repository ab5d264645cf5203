"""Activation matching and covariance-weighted weight matching against independent references
(tests/reference_alignment.py: numpy + scipy from Tatro et al. 2020 and Ferbach et al. 2024, written
without modefuse code) on real trained MLPs: the same permutations, and the same objective."""
import numpy as np
import pytest

import modefuse as mf
import reference_alignment as ref


def as_layers(model):
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in model.layers]


@pytest.fixture(scope="module")
def probe(fmnist_train):
    data = fmnist_train.subset(range(2000))
    return data, data.images.reshape(len(data), -1).double().div(255).numpy()


def _perms(res, n_groups):
    return [res.perms[f"layers.{i}"].numpy() for i in range(n_groups)]


def test_activation_matching_matches_the_reference(mlp400_six, probe):
    data, x = probe
    a, b = mlp400_six[0], mlp400_six[1]
    la, lb = as_layers(a), as_layers(b)
    ours = _perms(mf.align(a, b, method="activation", data=data, limit=len(data)), 3)
    theirs = ref.activation_matching(la, lb, x)  # post-ReLU correlations, one assignment per layer
    for i, (acts_a, acts_b) in enumerate(zip(ref.hidden_activations(la, x), ref.hidden_activations(lb, x))):
        live_a, live_b = acts_a.std(0) > 1e-12, acts_b.std(0) > 1e-12
        assert live_a.mean() > 0.7 and live_b.mean() > 0.7  # most units carry signal on the data
        # units dead on the data correlate with nothing: their match is a tie, broken differently
        rows = live_a & live_b[theirs[i]]
        assert np.array_equal(ours[i][rows], theirs[i][rows]), i
        corr = ref.cross_correlation(acts_a, acts_b)
        assert corr[np.arange(len(ours[i])), ours[i]].sum() == pytest.approx(
            corr[np.arange(len(theirs[i])), theirs[i]].sum(), rel=1e-6)  # both optimal


def test_covariance_weighted_matching_matches_the_reference(mlp400_six, probe):
    data, x = probe
    a, b = mlp400_six[2], mlp400_six[3]
    res = mf.align(a, b, method="weight_cov", data=data, limit=len(data), seed=0, tol=0)
    ours = _perms(res, 3)
    la, lb = as_layers(a), as_layers(b)
    # the paper's method: layer by layer, incoming weights weighted by model a's input second moment,
    # biases as in weight matching (<b_a, P b_b>)
    theirs = ref.cov_weighted_weight_matching(la, lb, x, bias="plain", incoming_only=True)
    for i in range(3):
        assert np.array_equal(ours[i], theirs[i]), i
    unpermuted = float(la[-1][1] @ lb[-1][1])  # the output bias: in the paper's sum, moved by no group
    assert res.history[-1] + unpermuted == pytest.approx(ref.objective(la, lb, x, theirs, bias="plain"), rel=1e-6)
    # it lowers the paper's distance (the mean squared pre-activation gap on a's inputs) below the identity
    assert ref.distance(la, lb, x, theirs, bias="plain") < 0.8 * ref.distance(la, lb, x, [np.arange(n) for n in
                                                                                           (400, 200, 100)],
                                                                              bias="plain")


# where each registered alignment method meets its independent reference (a new method brings its own)
REFERENCED = {"weight": "test_weight_matching_reference.py", "activation": "test_alignment_reference.py",
              "weight_cov": "test_alignment_reference.py"}


def test_every_registered_aligner_has_a_reference():
    from modefuse.match.methods import ALIGNERS
    assert set(ALIGNERS) == set(REFERENCED)
