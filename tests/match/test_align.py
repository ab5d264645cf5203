import pytest
import torch

import modefuse as mf
from modefuse.spec.transport import invert, random_perms
from modefuse.match.methods import ALIGNERS, register_aligner
from zoo_instances import build, randomize_norm_stats

CASES = ["mlp", "vgg_bn", "vgg", "resnet20", "resnet20_layer", "lstm"]


def _planted(key):
    ref = randomize_norm_stats(build(key, seed=0)).eval()
    x = torch.rand(256, 1, 28, 28)
    spec = mf.infer_spec(ref, x[:2])
    planted = random_perms(spec, seed=7)
    shuffled = build(key, seed=1).eval()
    shuffled.load_state_dict(mf.permute(ref.state_dict(), spec, planted))
    return ref, shuffled, x, planted


@pytest.mark.parametrize("method", sorted(ALIGNERS))  # every registered method meets the same contract
@pytest.mark.parametrize("key", CASES)
def test_planted_permutation_is_recovered_exactly(key, method):
    ref, shuffled, x, planted = _planted(key)
    before = {k: v.clone() for k, v in shuffled.state_dict().items()}
    res = mf.align(ref, shuffled, method=method, data=x, seed=3)
    for k, v in ref.state_dict().items():
        assert torch.equal(res.model.state_dict()[k], v), k
    for g, p in planted.items():  # the permutation found undoes the planted one
        assert torch.equal(res.perms[g], invert(p)), g
    # the aligned model computes the same function as the model it came from, which is unchanged
    assert torch.allclose(res.model(x), shuffled(x), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in shuffled.state_dict().items())


def test_weight_matching_is_seedable_and_converges():
    a, b = build("mlp", seed=0), build("mlp", seed=1)
    r1, r2 = mf.align(a, b, seed=5), mf.align(a, b, seed=5)
    assert all(torch.equal(r1.perms[g], r2.perms[g]) for g in r1.perms)
    assert r1.history == sorted(r1.history) and len(r1.history) >= 2
    assert r1.history[-1] == pytest.approx(r1.history[-2])


def test_mismatched_architectures_name_the_first_differing_tensor():
    a = mf.models.build("mlp", widths=[32, 16])
    b = mf.models.build("mlp", widths=[32, 17])
    with pytest.raises(mf.ArchitectureMismatchError, match=r"'layers\.1\.weight'.*\(16, 32\).*\(17, 32\)"):
        mf.align(a, b)
    c = mf.models.build("vgg", width=0.125, in_channels=1, in_size=28)
    with pytest.raises(mf.ArchitectureMismatchError, match="'layers.0.weight'"):
        mf.align(a, c)


def test_nan_weights_and_missing_data_are_clear_errors():
    a, b = build("mlp", seed=0), build("mlp", seed=1)
    with torch.no_grad():
        b.layers[0].weight[3, 3] = float("nan")
    with pytest.raises(mf.ModefuseError, match=r"layers\.0\.weight.*NaN"):
        mf.align(a, b)
    with pytest.raises(mf.ModefuseError, match="needs data"):
        mf.align(a, build("mlp", seed=1), method="activation")
    with pytest.raises(mf.ModefuseError, match="unknown alignment method"):
        mf.align(a, a, method="magic")


def test_a_new_alignment_method_is_one_function_and_one_registry_entry():
    @register_aligner("identity")
    def identity(p):
        """Leave every unit where it is."""
        return {g: torch.arange(n) for g, n in p.spec.sizes.items()}, []

    try:
        ref, shuffled, x, _ = _planted("mlp")
        res = mf.align(ref, shuffled, method="identity")
        assert res.method == "identity" and all(torch.equal(p, torch.arange(len(p))) for p in res.perms.values())
        assert ALIGNERS["identity"].summary == "Leave every unit where it is."
    finally:
        del ALIGNERS["identity"]
    with pytest.raises(mf.ModefuseError, match="unknown alignment method 'identity'; use one of weight"):
        mf.align(ref, shuffled, method="identity")
