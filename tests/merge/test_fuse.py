import pytest
import torch

import modefuse as mf
from modefuse.spec.transport import random_perms
from modefuse.merge.methods import FUSERS, Fusion, register_fuser
from zoo_instances import build, randomize_norm_stats


def _copies(key, k=3):
    ref = randomize_norm_stats(build(key, seed=0)).eval()
    x = torch.rand(32, 1, 28, 28)
    spec = mf.infer_spec(ref, x[:2])
    copies = []
    for s in range(k):
        c = build(key, seed=0).eval()
        c.load_state_dict(mf.permute(ref.state_dict(), spec, random_perms(spec, seed=20 + s)))
        copies.append(c)
    return ref, copies, x


@pytest.mark.parametrize("cost", ["weight", "activation"])
@pytest.mark.parametrize("method", sorted(m for m, f in FUSERS.items() if f.aligns))  # every registered one
@pytest.mark.parametrize("key", ["mlp", "vgg_bn", "resnet20", "lstm"])
def test_permuted_copies_fuse_back_to_the_model(key, method, cost):
    ref, copies, x = _copies(key)
    fused = mf.fuse(copies, method=method, cost=cost, data=x, example_input=x[:2]).model.eval()
    assert torch.allclose(fused(x), ref(x), atol=1e-5)
    averaged = mf.fuse(copies, method="average").model.eval()  # the baseline does not undo the shuffles
    assert not torch.allclose(averaged(x), ref(x), atol=1e-2)


def test_single_model_and_a_wider_target_keep_the_function():
    m = mf.models.build("mlp", widths=[16, 8], seed=0).eval()
    x = torch.rand(16, 1, 28, 28)
    same = mf.fuse([m], method="wasserstein")
    assert torch.allclose(same.model(x), m(x), atol=1e-6)
    # twice as wide: every unit becomes two copies, each copy's outgoing weight half of the original
    wide = mf.fuse([m], method="wasserstein", widths=[32, 16])
    assert wide.model.arch["kwargs"]["widths"] == [32, 16]
    assert [tuple(c[0].shape) for c in wide.couplings.values()] == [(32, 16), (16, 8)]
    assert torch.allclose(wide.model(x), m(x), atol=1e-5)
    w0 = wide.model.layers[0].weight
    pairs = wide.couplings["layers.0"][0].argmax(1)  # the source unit of each target unit
    assert torch.equal(w0, m.layers[0].weight[pairs])
    narrow = mf.fuse([m], method="wasserstein", widths={"layers.0": 8})
    assert narrow.model.layers[0].out_features == 8 and narrow.model.layers[1].out_features == 8


def test_couplings_are_transport_plans():
    ms = [mf.models.build("mlp", widths=[12, 6], seed=s) for s in range(3)]
    for eps in (None, 0.05):
        fus = mf.fuse(ms, method="wasserstein", widths=[9, 6], eps=eps, max_sweeps=3)  # plans at every sweep
        for g, plans in fus.couplings.items():
            assert len(plans) == 3
            for pi in plans:
                n_t, n_i = pi.shape
                assert torch.allclose(pi.sum(1), torch.full((n_t,), 1 / n_t), atol=1e-4)
                assert torch.allclose(pi.sum(0), torch.full((n_i,), 1 / n_i), atol=1e-4)


def test_bad_input_is_named():
    a, b = mf.models.build("mlp", widths=[8]), mf.models.build("vgg", width=0.125, in_channels=1, in_size=28)
    with pytest.raises(mf.ModefuseError, match="unknown fusion method"):
        mf.fuse([a, a], method="magic")
    with pytest.raises(mf.ArchitectureMismatchError):
        mf.fuse([a, b], method="wasserstein")
    with pytest.raises(mf.ArchitectureMismatchError, match="layers.0.weight"):
        mf.fuse([a, mf.models.build("mlp", widths=[9])], method="average")
    with pytest.raises(mf.ModefuseError, match="2 entries but the model has 1 group"):
        mf.fuse([a, a], widths=[4, 4])
    with pytest.raises(mf.ModefuseError, match="weights"):
        mf.fuse([a, a], weights=[1.0])
    with pytest.raises(mf.ModefuseError, match="otfusion keeps model 0"):
        mf.fuse([a, a], method="otfusion", widths=[4])
    with pytest.raises(mf.ModefuseError, match="unknown fusion cost"):
        mf.fuse([a, a], cost="euclid")
    with pytest.raises(mf.ModefuseError, match="pass data="):
        mf.fuse([a, a], cost="activation")
    for eps in (0, -1, float("nan")):
        with pytest.raises(mf.ModefuseError, match="eps .* must be a positive number"):
            mf.fuse([a, a], eps=eps)
    for widths in ([0], [-3], {"layers.0": 0}):
        with pytest.raises(mf.ModefuseError, match="width of group 'layers.0' must be a positive integer"):
            mf.fuse([a, a], widths=widths)


@pytest.mark.parametrize("key", ["vgg_bn", "resnet20_layer"])
def test_convolutional_models_fuse_into_other_widths(key):
    m = randomize_norm_stats(build(key, seed=0)).eval()
    x = torch.rand(8, 1, 28, 28)
    spec = mf.infer_spec(m, x[:2])
    doubled = {g: 2 * n for g, n in spec.sizes.items()}
    wide = mf.fuse([m], method="wasserstein", widths=doubled, example_input=x[:2]).model.eval()
    assert torch.allclose(wide(x), m(x), atol=1e-4)  # copies of every unit: the same function
    halved = {g: n // 2 for g, n in spec.sizes.items()}
    narrow = mf.fuse([m, build(key, seed=1)], method="wasserstein", widths=halved, example_input=x[:2]).model
    assert narrow.eval()(x).shape == (8, 10)
    assert mf.infer_spec(narrow, x[:2]).sizes == halved


@pytest.mark.parametrize("method", sorted(FUSERS))
def test_every_method_fuses_identical_copies_into_the_model(method):
    m = mf.models.build("mlp", widths=[12, 6], seed=0).eval()
    x = torch.rand(8, 1, 28, 28)
    fused = mf.fuse([m, m, m], method=method, cost="weight", data=x if FUSERS[method].needs_data else None).model.eval()
    assert torch.allclose(fused(x), m(x), atol=1e-5)


def test_a_new_fusion_method_is_one_function_and_one_registry_entry():
    @register_fuser("first", aligns=False)
    def first(p):
        """Keep model 0."""
        return Fusion(p.models[0], {}, None, "first")

    try:
        ms = [mf.models.build("mlp", widths=[8], seed=s) for s in range(2)]
        assert mf.fuse(ms, method="first").model is ms[0]
        assert FUSERS["first"].summary == "Keep model 0."
    finally:
        del FUSERS["first"]
    with pytest.raises(mf.ModefuseError, match="unknown fusion method 'first'"):
        mf.fuse(ms, method="first")
