"""Training throughput (examples/s) of mf.train, against a plain PyTorch loop measured in the same run.

The baseline is the textbook loop: DataLoader over a TensorDataset of float images, Adam, cross-entropy.
Run: .venv/bin/python benchmarks/train_speed.py [--n-mlp 20000] [--n-resnet 2000]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import modefuse as mf


def plain_loop(model, data, batch_size):
    ds = TensorDataset(data.images.float() / 255, data.targets)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=True):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return len(ds) / (time.perf_counter() - t0)


def ours(model, data, batch_size):
    t0 = time.perf_counter()
    mf.train(model, data, epochs=1, lr=1e-3, seed=0, batch_size=batch_size, progress=False)
    return len(data) / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-mlp", type=int, default=20000)
    p.add_argument("--n-resnet", type=int, default=2000)
    args = p.parse_args()
    train = mf.data.load("fashion-mnist", "train")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cases = [("mlp 784-512-512-512-10", "mlp", {"widths": [512, 512, 512]}, args.n_mlp),
             ("resnet-20 (x1, BatchNorm)", "resnet20", {}, args.n_resnet)]
    print(f"{'model':28s} {'mf.train ex/s':>14s} {'plain loop ex/s':>16s} {'ratio':>6s}")
    for label, name, kw, n in cases:
        data = train.subset(range(n))
        fresh = lambda: mf.models.build_for(name, data, seed=0, **kw)  # noqa: E731
        ours(fresh(), data.subset(range(n // 4)), 128)  # warm-up: thread pools, allocator
        runs = [(ours(fresh(), data, 128), plain_loop(fresh(), data, 128)) for _ in range(2)]
        a, b = max(r[0] for r in runs), max(r[1] for r in runs)  # best of two, alternated
        print(f"{label:28s} {a:14.0f} {b:16.0f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
