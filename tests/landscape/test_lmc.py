"""Linear mode connectivity on real data: two MLPs from different seeds, before and after alignment."""
import pytest
import torch

import modefuse as mf


def test_endpoints_of_the_path_are_the_models(mlp_pair, fmnist_test):
    a, b = mlp_pair
    path = mf.interpolate(a, b, fmnist_test, steps=5, progress=False)
    assert path.alphas[0] == 0 and path.alphas[-1] == 1 and len(path.alphas) == 5
    for model, i in ((a, 0), (b, -1)):
        ev = mf.evaluate(model, fmnist_test)
        assert path.loss[i] == pytest.approx(ev["loss"], rel=1e-4)
        assert path.accuracy[i] == pytest.approx(ev["accuracy"])


def test_alignment_removes_the_loss_barrier(mlp_pair, fmnist_train, fmnist_test):
    a, b = mlp_pair
    naive = mf.interpolate(a, b, fmnist_test, progress=False)
    barriers = {"naive": naive.loss_barrier}
    for method in ("weight", "activation"):
        aligned = mf.align(a, b, method=method, data=fmnist_train, seed=0).model
        barriers[method] = mf.interpolate(a, aligned, fmnist_test, progress=False).loss_barrier
    print("loss barriers:", barriers)
    assert barriers["naive"] > 0.5
    for method in ("weight", "activation"):
        assert barriers[method] < 0.05 and barriers[method] < barriers["naive"] / 10, barriers


def test_batchnorm_statistics_are_recomputed_along_the_path(fmnist_train, fmnist_test):
    data = fmnist_train.subset(range(10000))
    a, b = (mf.models.build("vgg", width=0.25, in_channels=1, in_size=28, batch_norm=True, seed=s) for s in (0, 1))
    for m, s in ((a, 0), (b, 1)):
        mf.train(m, data, epochs=1, lr=1e-3, seed=s, progress=False)
    test = fmnist_test.subset(range(2000))
    reset = mf.interpolate(a, b, test, steps=3, bn_data=data, progress=False)
    stale = mf.interpolate(a, b, test, steps=3, reset_bn_stats=False, progress=False)
    print("with BN reset:", reset.accuracy, "stale statistics:", stale.accuracy)
    for i in (0, -1):  # at the endpoints, statistics recomputed on the training data match the trained ones
        assert abs(reset.accuracy[i] - stale.accuracy[i]) < 0.02
    assert reset.accuracy[1] > stale.accuracy[1] + 0.1  # the midpoint collapses without recomputed statistics
    before = {k: v.clone() for k, v in a.state_dict().items()}
    mf.reset_bn(a, data)
    assert not torch.equal(before["features.1.running_mean"], a.state_dict()["features.1.running_mean"])
