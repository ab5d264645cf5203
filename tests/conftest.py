"""Shared fixtures: the real Fashion-MNIST files (a test that needs them fails when they are missing, unless
MODEFUSE_SKIP_DATA_TESTS=1, as `make test-no-data` sets, skips it)."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch

import modefuse as mf
from modefuse.zoo.train_or_load import trained


# specs cached on disk by one test run must not leak into another, nor a developer's cache into tests
os.environ["MODEFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="modefuse-test-cache-")

SKIP_DATA_TESTS = os.environ.get("MODEFUSE_SKIP_DATA_TESTS", "") not in ("", "0")


def _load(split):
    try:
        return mf.data.load("fashion-mnist", split)
    except mf.DataNotFoundError as e:
        missing = str(e)
    if SKIP_DATA_TESTS:
        pytest.skip(f"Fashion-MNIST not installed (MODEFUSE_SKIP_DATA_TESTS is set): {missing}")
    pytest.fail(f"this test needs Fashion-MNIST: {missing}. `make data` (tools/get-data) installs it; "
                f"`make test-no-data` skips the tests that need it", pytrace=False)


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


@pytest.fixture(scope="session")
def mlp200_s1(fmnist_train, zoo_dir):
    """A 200-100-50 MLP (2 epochs of Adam, seed 1): half the width of `mlp400_six`."""
    return trained(zoo_dir / "mlp200_s1.safetensors", "mlp", fmnist_train, seed=1, epochs=2, progress=False,
                   model_kwargs={"widths": [200, 100, 50]})


@pytest.fixture(scope="session")
def label_split_pair(fmnist_train, zoo_dir):
    """Two 400-200-100 MLPs (2 epochs of Adam, seeds 0 and 1), each trained on five of the ten classes (the
    label split of wb-hetero)."""
    halves = mf.data.split(fmnist_train, 2, mode="labels", seed=0)
    return [trained(zoo_dir / f"labels{i}.safetensors", "mlp", h, seed=i, epochs=2, progress=False,
                    model_kwargs={"widths": [400, 200, 100], "num_classes": 10}) for i, h in enumerate(halves)]
