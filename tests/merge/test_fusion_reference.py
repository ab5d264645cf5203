"""`mf.fuse` against an independent reference (tests/reference_fusion.py: numpy + POT from the papers'
formulas, no modefuse code) on real trained MLPs, and the cost checked by hand on a toy."""
import numpy as np
import pytest
import torch

import modefuse as mf
import reference_fusion as ref
from modefuse.merge.couplings import CouplingRule, Fuser, sqdist
from modefuse.merge.methods import FUSERS


def as_layers(model):
    """The MLP's (W, b) pairs in float64, input to output."""
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in model.layers]


@pytest.fixture(scope="module")
def test_arrays(fmnist_test):
    x = fmnist_test.images.reshape(len(fmnist_test), -1).double().div(255).numpy()
    return x, fmnist_test.targets.numpy()


def assert_same_couplings(ours, theirs, rows=0.99):
    """The couplings agree on (nearly) every target unit: exact ties may be broken differently."""
    for g, ref_plans in zip(ours, theirs):
        for i, (pi, rp) in enumerate(zip(ours[g], ref_plans)):
            same_rows = np.isclose(pi.double().numpy(), rp, atol=1e-6).all(axis=1).mean()
            assert same_rows >= rows, (g, i, same_rows)


# The reference of each registered fusion method that aligns (a new method comes with its own). GWB's
# quadratic term couples a layer's hidden-to-hidden matrix only: on an MLP it is the Wasserstein barycenter.
REFERENCES = {"otfusion": lambda layers: ref.otfusion(layers),
              "wasserstein": lambda layers: ref.wasserstein_barycenter(layers, [400, 200, 100]),
              "gromov": lambda layers: ref.wasserstein_barycenter(layers, [400, 200, 100])}


def test_every_registered_method_has_a_reference():
    assert {m for m, f in FUSERS.items() if f.aligns} == set(REFERENCES)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("method", sorted(REFERENCES))
def test_fusion_of_trained_mlps_matches_the_reference(mlp400_six, test_arrays, k, method):
    models = mlp400_six[:k]
    x, y = test_arrays
    fus = mf.fuse(models, method=method, cost="weight", outgoing=False)
    layers, plans = REFERENCES[method]([as_layers(m) for m in models])
    assert_same_couplings(fus.couplings, plans)
    ours, theirs = ref.accuracy(as_layers(fus.model), x, y), ref.accuracy(layers, x, y)
    print(method, k, "modefuse", ours, "reference", theirs)
    assert abs(ours - theirs) <= 0.005
    inputs = np.mean([ref.accuracy(as_layers(m), x, y) for m in models])
    assert theirs > inputs - 0.25  # the reference itself is a working fusion, not a broken twin


def test_models_of_different_widths_match_the_reference(mlp400_six, mlp200_s1, test_arrays):
    x, y = test_arrays
    models = [mlp400_six[0], mlp200_s1]
    fus = mf.fuse(models, method="wasserstein", widths=[300, 150, 75], cost="weight", outgoing=False)
    layers, plans = ref.wasserstein_barycenter([as_layers(m) for m in models], [300, 150, 75])
    assert_same_couplings(fus.couplings, plans)
    assert [tuple(p.shape) for p in fus.couplings["layers.1"]] == [(150, 200), (150, 100)]
    ours, theirs = ref.accuracy(as_layers(fus.model), x, y), ref.accuracy(layers, x, y)
    print("widths: modefuse", ours, "reference", theirs)
    assert abs(ours - theirs) <= 0.005


def _toy(w1, b1, w2, b2):
    """in 2 -> 2 hidden -> 2 hidden -> 1 output, with the given hidden weights (the output layer is zero)."""
    m = mf.models.build("mlp", widths=[len(w1), len(w2)], in_features=2, num_classes=1)
    with torch.no_grad():
        for layer, (w, b) in zip(m.layers, ((w1, b1), (w2, b2))):
            layer.weight.copy_(torch.tensor(w, dtype=torch.float32))
            layer.bias.copy_(torch.tensor(b, dtype=torch.float32))
        m.layers[2].weight.zero_()
        m.layers[2].bias.zero_()
    return m


def _fuser(models, sizes):
    specs = [mf.infer_spec(m, torch.zeros(2, 1, 1, 2)) for m in models]
    states = [m.state_dict() for m in models]
    return Fuser(specs, states, sizes, [1 / len(models)] * len(models), CouplingRule(free_target=True, recurrent=False),
                 None, 1.0, False, None)


def test_cost_compares_whole_transported_incoming_vectors():
    """C[j, j'] = ||[W_t | b_t][j] - [W_i (m pi_prev^T) | b_i][j']||^2, weights and bias on the same footing."""
    a = _toy([[1, 0], [0, 1]], [0, 0], [[3, 0], [0, 3]], [0.5, 0])
    # b's first layer is a's with its units swapped; its second layer reads them in b's order, and its
    # bias sits on the other unit
    b = _toy([[0, 1], [1, 0]], [0, 0], [[0, 3], [3, 0]], [0, 0.5])
    f = _fuser([a, b], {"layers.0": 2, "layers.1": 2})
    f.done, f.incomplete = set(), False
    f.fit_group("layers.0", 5)
    swap = torch.tensor([[0, 0.5], [0.5, 0]])
    assert torch.equal(f.couplings["layers.0"][1], swap)
    entries = f.entries("layers.1", [1])
    fb = torch.cat(f.features("layers.1", 1, entries), 1)
    # b's second layer with its inputs put back in a's order, and its bias: rows (3, 0 | 0) and (0, 3 | 0.5)
    assert torch.allclose(fb, torch.tensor([[3.0, 0, 0], [0, 3, 0.5]]))
    cost = sqdist(f.features("layers.1", 0, entries), [fb])
    # by hand, against a's rows (3, 0 | 0.5) and (0, 3 | 0): ||(3, 0, .5) - (3, 0, 0)||^2 = 0.25,
    # ||(3, 0, .5) - (0, 3, .5)||^2 = 18, ...: weights and bias count alike, so the weights decide
    assert torch.allclose(cost, torch.tensor([[0.25, 18.0], [18.0, 0.25]], dtype=torch.float64))
    f.fit_group("layers.1", 5)
    assert torch.equal(f.couplings["layers.1"][1], torch.eye(2) / 2)


def test_cost_through_a_rectangular_coupling():
    """Inputs coupled by a 3x2 plan: each source input's weight is shared among its target inputs."""
    a = _toy([[1, 0], [0, 1]], [0, 0], [[2, 4], [6, 8]], [1, -1])
    f = _fuser([a], {"layers.0": 3, "layers.1": 2})
    f.done, f.incomplete = set(), False
    # target unit 0 <- input unit 0; target unit 1 <- half of each; target unit 2 <- input unit 1
    f.couplings["layers.0"][0] = torch.tensor([[1 / 3, 0], [1 / 6, 1 / 6], [0, 1 / 3]])
    fa = torch.cat(f.features("layers.1", 0, f.entries("layers.1", [0])), 1)
    # W (m pi^T) with m = 2: row (2, 4) -> (2 * 2/3, 2 * 1/3 + 4 * 1/3, 4 * 2/3) = (4/3, 2, 8/3)
    assert torch.allclose(fa, torch.tensor([[4 / 3, 2, 8 / 3, 1], [4, 14 / 3, 16 / 3, -1]]))
    assert torch.allclose(fa[:, :3].sum(1), torch.tensor([2.0 + 4, 6 + 8]))  # every source weight kept whole
    # a plan that splits every input into two copies: the transported layer computes the same outputs
    f.couplings["layers.0"][0] = torch.tensor([[0.25, 0], [0.25, 0], [0, 0.25], [0, 0.25]])
    fa = torch.cat(f.features("layers.1", 0, f.entries("layers.1", [0])), 1)
    h = torch.tensor([0.3, 0.7])
    assert torch.allclose(fa[:, :4] @ h.repeat_interleave(2), torch.tensor([[2.0, 4], [6, 8]]) @ h)
