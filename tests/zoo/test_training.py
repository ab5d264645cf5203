import pytest
import torch

import modefuse as mf
from modefuse.zoo.recipe import lr_at


def _small(fmnist_train, n=1024):
    return fmnist_train.subset(range(n))


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_seed_same_weights_and_resume_after_interruption(fmnist_train, tmp_path):
    data = _small(fmnist_train)
    ref = mf.models.build("mlp", widths=[32, 32], seed=0)
    hist = mf.train(ref, data, epochs=3, lr=0.05, seed=4, optimizer="sgd", batch_size=64, progress=False)
    assert len(hist) == 3 and hist[-1]["train_loss"] < hist[0]["train_loss"]

    again = mf.models.build("mlp", widths=[32, 32], seed=0)
    mf.train(again, data, epochs=3, lr=0.05, seed=4, optimizer="sgd", batch_size=64, progress=False)
    assert torch.equal(_weights(ref), _weights(again))

    other_seed = mf.models.build("mlp", widths=[32, 32], seed=0)
    mf.train(other_seed, data, epochs=3, lr=0.05, seed=5, optimizer="sgd", batch_size=64, progress=False)
    assert not torch.equal(_weights(ref), _weights(other_seed))

    # interrupted in the middle of epoch 2, then resumed from the per-epoch state file
    state = tmp_path / "run.train-state"
    calls = {"n": 0}

    def interrupt(model, x, y):
        calls["n"] += 1
        if calls["n"] == 16 + 5:  # 16 batches per epoch
            raise KeyboardInterrupt
        return x
    broken = mf.models.build("mlp", widths=[32, 32], seed=0)
    with pytest.raises(KeyboardInterrupt):
        mf.train(broken, data, epochs=3, lr=0.05, seed=4, optimizer="sgd", batch_size=64, progress=False,
                 resume=state, perturb=interrupt)
    assert state.is_file()
    resumed = mf.models.build("mlp", widths=[32, 32], seed=1)  # its own init is overwritten by the state
    hist2 = mf.train(resumed, data, epochs=3, lr=0.05, seed=4, optimizer="sgd", batch_size=64,
                     progress=False, resume=state)
    assert torch.equal(_weights(ref), _weights(resumed))
    assert len(hist2) == 3 and not state.exists()


def test_schedules():
    assert lr_at("cosine", 1.0, 0, 100) == 1.0 and lr_at("cosine", 1.0, 50, 100) == pytest.approx(0.5)
    assert lr_at("step", 1.0, 80, 100) == pytest.approx(0.01)
    with pytest.raises(mf.ModefuseError, match="schedule"):
        lr_at("linear", 1.0, 0, 1)


def test_evaluate_matches_a_manual_computation(fmnist_test):
    model = mf.models.build("mlp", widths=[16], seed=0)
    data = fmnist_test.subset(range(300))
    got = mf.evaluate(model, data, batch_size=128)
    x = data.images.float() / 255
    out = model(x)
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(out, data.targets).item(), rel=1e-5)
    assert got["accuracy"] == pytest.approx((out.argmax(1) == data.targets).float().mean().item())
    loader = torch.utils.data.DataLoader(data, batch_size=50)
    assert mf.evaluate(model, loader)["accuracy"] == pytest.approx(got["accuracy"])


def test_mlp_512x3_reaches_84_percent_in_two_epochs(fmnist_train, fmnist_test):
    model = mf.models.build("mlp", widths=[512, 512, 512], seed=0)
    mf.train(model, fmnist_train, epochs=2, lr=1e-3, seed=0, optimizer="adam", progress=False)
    acc = mf.evaluate(model, fmnist_test)["accuracy"]
    assert acc >= 0.84, acc
