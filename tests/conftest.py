"""Shared fixtures: the real Fashion-MNIST files (required in CI, skipped elsewhere when missing)."""
from __future__ import annotations

import os

import pytest
import torch

import modefuse as mf
from modefuse.trained import trained


def _load(split):
    try:
        return mf.data.load("fashion-mnist", split)
    except mf.DataNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have Fashion-MNIST: {e}")
        pytest.skip(f"Fashion-MNIST not installed: {e}")


@pytest.fixture(scope="session")
def fmnist_train():
    return _load("train")


@pytest.fixture(scope="session")
def fmnist_test():
    return _load("test")


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("trained")


@pytest.fixture(scope="session")
def mlp_pair(fmnist_train, zoo_dir):
    """Two 784-512-512-512-10 MLPs, 5 epochs of Adam, seeds 0 and 1."""
    return [trained(zoo_dir / f"mlp512_s{s}.safetensors", "mlp", fmnist_train, seed=s, epochs=5, progress=False,
                    model_kwargs={"widths": [512, 512, 512]}) for s in (0, 1)]


@pytest.fixture(scope="session")
def mlp400_six(fmnist_train, zoo_dir):
    """Six 400-200-100 MLPs trained independently (2 epochs of Adam, seeds 0..5), as in the WB paper."""
    return [trained(zoo_dir / f"mlp400_s{s}.safetensors", "mlp", fmnist_train, seed=s, epochs=2, progress=False,
                    model_kwargs={"widths": [400, 200, 100]}) for s in range(6)]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cnn_pair(fmnist_train, zoo_dir):
    """Two small CNNs (VGG11 layout at width 1/4, no BatchNorm), 2 epochs on 20,000 training images."""
    data = fmnist_train.subset(range(20000))
    return [trained(zoo_dir / f"cnn_s{s}.safetensors", "vgg", data, seed=s, epochs=2, progress=False,
                    model_kwargs={"width": 0.25}) for s in (0, 1)]
