"""Shared fixtures: the real Fashion-MNIST files (required in CI, skipped elsewhere when missing)."""
from __future__ import annotations

import os

import pytest
import torch

import modefuse as mf


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


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
