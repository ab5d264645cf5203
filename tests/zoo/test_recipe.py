"""One frozen training recipe, taken by mf.train, fit_curve, pam, trained models and the command line."""
import dataclasses

import pytest
import torch

import modefuse as mf
from modefuse.zoo.recipe import Recipe
from modefuse.zoo.train_or_load import trained


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_recipe_is_checked_frozen_and_replaced_by_name():
    r = Recipe(epochs=2, lr=0.05, optimizer="sgd", seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lr = 1.0
    assert r.replace(lr=None, epochs=4) == Recipe(epochs=4, lr=0.05, optimizer="sgd", seed=3)
    assert Recipe.from_dict(r.to_dict()) == r and r.changes() == {"epochs": 2, "lr": 0.05, "optimizer": "sgd",
                                                                  "seed": 3}
    with pytest.raises(mf.InvalidArgumentError, match="lr must be a positive number"):
        Recipe(lr=-1)
    with pytest.raises(mf.InvalidArgumentError, match="optimizer must be one of"):
        r.replace(optimizer="lbfgs")
    with pytest.raises(mf.InvalidArgumentError, match="epoch_count is not part of a training recipe"):
        r.replace(epoch_count=3)
    with pytest.raises(mf.InvalidArgumentError, match="pass epochs= and the other fields by name"):
        mf.train(mf.models.build("mlp", widths=[4]), [], 3)


def test_a_recipe_trains_as_its_fields_do(fmnist_train):
    data = fmnist_train.subset(range(512))
    r = Recipe(epochs=2, lr=0.05, optimizer="sgd", batch_size=64, schedule="step", seed=5)
    by_recipe, by_fields, overridden = (mf.models.build("mlp", widths=[16], seed=0) for _ in range(3))
    mf.train(by_recipe, data, r, progress=False)
    mf.train(by_fields, data, epochs=2, lr=0.05, optimizer="sgd", batch_size=64, schedule="step", seed=5,
             progress=False)
    assert torch.equal(_weights(by_recipe), _weights(by_fields))
    mf.train(overridden, data, r, lr=0.01, progress=False)  # a field by name replaces the recipe's
    assert not torch.equal(_weights(by_recipe), _weights(overridden))


def test_curves_and_cached_models_take_the_same_recipe(fmnist_train, tmp_path):
    data = fmnist_train.subset(range(256))
    r = Recipe(epochs=1, lr=0.01, batch_size=64, seed=2)
    a, b = (trained(tmp_path / f"m{s}.safetensors", "mlp", data, r.replace(seed=s), progress=False,
                    model_kwargs={"widths": [8]}) for s in (0, 1))
    again = trained(tmp_path / "m0.safetensors", "mlp", data, r.replace(seed=0), progress=False,
                    model_kwargs={"widths": [8]})
    assert torch.equal(_weights(a), _weights(again))
    assert again.checkpoint_metadata["recipe"]["lr"] == 0.01
    with pytest.raises(mf.ModefuseError, match="trained by another recipe"):
        trained(tmp_path / "m0.safetensors", "mlp", data, r.replace(seed=0, lr=0.02), progress=False,
                model_kwargs={"widths": [8]})
    c1 = mf.fit_curve(a, b, data, recipe=r, progress=False)
    c2 = mf.fit_curve(a, b, data, epochs=1, lr=0.01, batch_size=64, seed=2, progress=False)
    assert torch.equal(_weights(c1.middle), _weights(c2.middle))
    p = mf.pam(a, b, data, rounds=2, align="weight", recipe=r, progress=False)
    assert [row["epoch"] for row in p.history] == [1, 2]
