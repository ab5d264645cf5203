"""Curves, planes and robustness (Tatro et al. 2020; the WB paper's loss planes)."""
import math

import pytest
import torch

import modefuse as mf
from modefuse.landscape.curves import coefficients
from zoo_instances import build


def _weights(m):
    return {k: v for k, v in m.state_dict().items()}


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_endpoints_are_exact_and_checkpoints_round_trip(kind, fmnist_train, tmp_path):
    a, b = build("vgg_bn", seed=0), build("vgg_bn", seed=1)
    curve = mf.fit_curve(a, b, fmnist_train, kind=kind, epochs=1, limit=256, progress=False)
    for t, end in ((0, a), (1, b)):
        pt = curve.point(t)
        assert all(torch.equal(pt.state_dict()[k], v) for k, v in end.state_dict().items())
    assert sum(coefficients(kind, 0.3)) == pytest.approx(1.0)
    if kind == "polychain":  # the chain passes through the middle point at t = 1/2
        mid = curve.point(0.5)
        assert all(torch.allclose(mid.state_dict()[k], v) for k, v in curve.middle.state_dict().items()
                   if v.is_floating_point())
    path = curve.save(tmp_path / "c.safetensors")
    back = mf.load_curve(path)
    x = torch.rand(4, 1, 28, 28)
    assert back.kind == kind
    assert torch.equal(back.point(0.3).eval()(x), curve.point(0.3).eval()(x))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(mf.CheckpointError):
        mf.load_curve(tmp_path / "bad.safetensors")


def test_plane_anchor_values_equal_evaluate(fmnist_test):
    a, b, c = (build("mlp", seed=s) for s in range(3))
    data = fmnist_test.subset(range(500))
    p = mf.plane(a, b, c, data, resolution=3, progress=False)
    assert p.anchors["model 1"] == (0.0, 0.0) and p.anchors["model 2"][1] == 0.0
    for name, m in zip(p.anchors, (a, b, c)):
        ev = mf.evaluate(m, data)
        assert p.anchor_loss[name] == pytest.approx(ev["loss"], rel=1e-5)
        assert p.anchor_accuracy[name] == ev["accuracy"]
    assert len(p.loss) == 3 and len(p.loss[0]) == 3 and all(0 <= v <= 1 for r in p.accuracy for v in r)
    # the grid is evaluated with a cached first layer: check one grid point against a direct evaluation
    x, y = p.xs[0], p.ys[2]
    flat = [torch.cat([q.detach().flatten() for q in m.parameters()]) for m in (a, b, c)]
    u, v = flat[1] - flat[0], flat[2] - flat[0]
    e1 = u / u.norm()
    vp = v - (v @ e1) * e1
    point = flat[0] + x * e1 + y * vp / vp.norm()
    direct = build("mlp")
    torch.nn.utils.vector_to_parameters(point, direct.parameters())
    assert p.loss[2][0] == pytest.approx(mf.evaluate(direct, data)["loss"], rel=1e-4)


def test_pgd_lowers_accuracy_within_its_bound(mlp_pair, fmnist_test):
    model = mlp_pair[0]
    data = fmnist_test.subset(range(1000))
    attack = mf.PGD(eps=0.1, steps=5, step_size=0.03, seed=0)
    x, y = data.images.float() / 255, data.targets
    adv = attack(model, x, y)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    clean = mf.evaluate(model, data)["accuracy"]
    robust = mf.robust_accuracy(model, data, attack)
    print("clean", clean, "robust", robust)
    assert robust < clean - 0.3
    path = mf.interpolate(model, mlp_pair[1], data, steps=3, attack=attack, attack_limit=500, progress=False)
    assert len(path.robust_accuracy) == 3 and path.robust_accuracy[0] == pytest.approx(
        mf.robust_accuracy(model, data, attack, limit=500))


def _mid_loss(curve, data):
    return mf.evaluate(curve.point(0.5), data)["loss"]


def test_curves_beat_the_line_and_alignment_speeds_them_up(cnn_pair, fmnist_train, fmnist_test):
    a, b = cnn_pair
    test = fmnist_test.subset(range(2000))
    train = fmnist_train.subset(range(20000))
    linear = mf.interpolate(a, b, test, steps=11, progress=False)
    target = 1.5 * (mf.evaluate(a, test)["loss"] + mf.evaluate(b, test)["loss"]) / 2
    epochs_needed, curves = {}, {}
    for align in (None, "activation"):
        curve = mf.fit_curve(a, b, train, align=align, epochs=1, limit=5000, progress=False)
        losses = [_mid_loss(curve, test)]
        while losses[-1] > target and len(losses) < 4:
            curve = mf.fit_curve(a, curve.b, train, epochs=1, limit=5000, progress=False, middle=curve.middle)
            losses.append(_mid_loss(curve, test))
        epochs_needed[align] = len(losses) if losses[-1] <= target else math.inf
        curves[align] = curve
        print(align, "mid-curve loss per epoch", losses, "target", target)
    ev = curves[None].evaluate(test, n=11)
    print("linear min accuracy", min(linear.accuracy), "curve", ev.min_accuracy, "epochs", epochs_needed)
    assert ev.min_accuracy > min(linear.accuracy) + 0.2
    assert epochs_needed["activation"] < epochs_needed[None]


def test_pam_reports_each_round(cnn_pair, fmnist_train):
    a, b = cnn_pair
    curve = mf.pam(a, b, fmnist_train.subset(range(2000)), rounds=2, progress=False, align="weight")
    assert [r["round"] for r in curve.pam_history] == [1, 2]
    assert curve.pam_history[1]["objective"] is not None and curve.pam_history[1]["units_moved"] >= 0
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(curve.b(x), b(x), atol=1e-4)  # b is only permuted: same function


def test_robust_curve_trains_on_adversarial_examples_and_reports_robust_accuracy(mlp_pair, fmnist_train,
                                                                                   fmnist_test):
    a, b = mlp_pair
    attack = mf.PGD(eps=0.05, steps=2, step_size=0.03, seed=0)
    calls = {"n": 0}

    class Counting(mf.PGD):
        def __call__(self, model, x, y):
            calls["n"] += 1
            return super().__call__(model, x, y)

    curve = mf.fit_curve(a, b, fmnist_train, align="weight", adversarial=Counting(0.05, 2, 0.03, 0), epochs=1,
                         limit=1024, progress=False)
    assert calls["n"] == 8  # one attack per batch of 128
    ev = curve.evaluate(fmnist_test, n=3, attack=attack, limit=300)
    assert len(ev.robust_accuracy) == 3
    assert all(r < c for r, c in zip(ev.robust_accuracy, ev.accuracy))


def test_a_curve_is_trained_by_mf_train_and_its_divergence_is_caught(fmnist_train):
    """One training loop: the curve is a module (`CurveModule`) trained by `mf.train`, whose checks come with it."""
    from modefuse.landscape.curves import CurveModule
    a, b = (build("mlp", seed=s) for s in (0, 1))
    curve = mf.fit_curve(a, b, fmnist_train, epochs=1, limit=512, progress=False)
    assert set(curve.history[0]) >= {"epoch", "train_loss", "train_accuracy"}  # mf.train's rows
    module = CurveModule(curve)
    assert {n for n, _ in module.named_parameters()} == {f"middle.{n}" for n, _ in curve.middle.named_parameters()}
    with pytest.raises(mf.ModefuseError, match="training diverged"):
        mf.fit_curve(a, b, fmnist_train, epochs=1, limit=512, lr=1e30, progress=False)
