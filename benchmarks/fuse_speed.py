"""Fusion time and peak memory: mf.fuse against a plain per-layer POT implementation, same models, same run.

The baseline is the textbook OTFusion loop written directly on POT, as one finds it in papers' code:
for each layer in order, transport the model's incoming weights through the previous layer's plan,
build the cost with ot.dist, solve with ot.emd (or ot.sinkhorn), transport the rows, and finally
average. It handles chains of Linear/Conv layers (MLP, VGG without BatchNorm) only.

Each case runs in a fresh subprocess, so the peak resident memory it reports (the growth of the
process's peak RSS during fusion) belongs to that case alone. The MLPs are trained (1 epoch of Adam on
Fashion-MNIST, kept under runs/bench/ and reused), so each case also prints the one-shot test accuracy
of both fusions (the same algorithm: they should agree); the VGG11s are at initialization (fusion time
does not depend on training).

Run: .venv/bin/python benchmarks/fuse_speed.py [--ks 2,4,8] [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import ot
import torch
from torch import nn

import modefuse as mf


def build(model: str, seed: int) -> nn.Module:
    if model == "mlp":
        from modefuse.zoo.train_or_load import trained
        return trained(f"runs/bench/mlp512_s{seed}.safetensors", "mlp", mf.data.load("fashion-mnist", "train"),
                       seed=seed, epochs=1, progress=False, model_kwargs={"widths": [512, 512, 512]})
    return mf.models.build("vgg", width=1.0, in_channels=1, in_size=28, seed=seed)


def accuracy(model: nn.Module, fused) -> float | None:
    """Test accuracy of `fused` (a module, or the POT loop's weight and bias lists in `model`'s layers)."""
    if getattr(model, "arch", {}).get("name") != "mlp":
        return None
    if not isinstance(fused, nn.Module):
        out = copy.deepcopy(model)
        layers = [m for m in out.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        with torch.no_grad():
            for layer, w, b in zip(layers, *fused):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        fused = out
    return mf.evaluate(fused.cpu(), mf.data.load("fashion-mnist", "test"))["accuracy"]


def plain_pot(models, eps):
    """Per-layer OTFusion on POT (model 0 is the target), then averaging."""
    layers = [[m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))] for model in models]
    fused = [m.weight.detach().clone() for m in layers[0]]
    biases = [m.bias.detach().clone() for m in layers[0]]
    for i in range(1, len(models)):
        prev = None  # the plan of the previous layer (n_prev x n_prev), scaled to a permutation-like map
        for j, layer in enumerate(layers[i]):
            w = layer.weight.detach()
            if prev is not None:
                if w.dim() == 2 and w.shape[1] != prev.shape[0]:  # conv -> linear: channels in blocks
                    block = w.shape[1] // prev.shape[0]
                    w = (w.reshape(w.shape[0], prev.shape[0], block).transpose(1, 2) @ prev.T).transpose(1, 2)
                    w = w.reshape(w.shape[0], -1)
                else:
                    w = torch.einsum("oi...,ti->ot...", w, prev)
            last = j == len(layers[i]) - 1
            if last:
                plan = torch.eye(w.shape[0])
            else:
                t_rows = layers[0][j].weight.detach().reshape(w.shape[0], -1)
                cost = ot.dist(t_rows, w.reshape(w.shape[0], -1))
                n = w.shape[0]
                a = torch.full((n,), 1.0 / n)
                p = ot.emd(a, a, cost) if eps is None else ot.sinkhorn(a, a, cost / cost.max(), eps)
                plan = p * n
            fused[j] += (plan @ w.reshape(w.shape[0], -1)).reshape(fused[j].shape)
            biases[j] += plan @ layer.bias.detach()
            prev = plan
    return [w / len(models) for w in fused], [b / len(models) for b in biases]


def run_case(model: str, k: int, solver: str, impl: str, device: str) -> dict:
    models = [build(model, s).to(device) for s in range(k)]
    eps = None if solver == "exact" else 0.01
    fn = ((lambda ms: mf.fuse(ms, method="otfusion", cost="weight", outgoing=False, eps=eps).model)
          if impl == "modefuse" else (lambda ms: plain_pot(ms, eps)))
    # warm-up on two tiny MLPs, the same for both: one-time imports and tracing machinery are not part of
    # a fusion's cost, and the peak memory that follows is what fusing these models adds to the loaded models
    fn([mf.models.build("mlp", widths=[8, 8], seed=s).to(device) for s in range(2)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fused = fn(models)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0
    return {"seconds": seconds, "peak_rss_mb": peak / 1024, "gpu_peak_mb": gpu, "accuracy": accuracy(models[0], fused)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="2,4,8")
    p.add_argument("--models", default="mlp,vgg11")
    p.add_argument("--device", default="cpu")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        model, k, solver, impl = args.case.split(":")
        print(json.dumps(run_case(model, int(k), solver, impl, args.device)))
        return
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; "
          f"method otfusion (model 0 as target, the paper's weight cost); MLPs trained, VGG11s at initialization")
    if "mlp" in args.models.split(","):  # train (or find) the MLPs before timing anything
        for seed in range(max(int(v) for v in args.ks.split(","))):
            build("mlp", seed)
    print(f"{'model':8s} {'K':>2s} {'solver':8s} {'modefuse s':>10s} {'POT loop s':>10s} {'speed-up':>8s} "
          f"{'modefuse MB':>11s} {'POT loop MB':>11s} {'memory ratio':>12s} {'modefuse acc':>12s} {'POT loop acc':>12s}")
    for model in args.models.split(","):
        for k in [int(v) for v in args.ks.split(",")]:
            for solver in ("exact", "sinkhorn"):
                res = {}
                for impl in ("modefuse", "pot"):
                    out = subprocess.run([sys.executable, __file__, "--case", f"{model}:{k}:{solver}:{impl}",
                                          "--device", args.device], capture_output=True, text=True)
                    if out.returncode != 0:
                        raise SystemExit(out.stderr)
                    res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
                a, b = res["modefuse"], res["pot"]
                pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
                print(f"{model:8s} {k:2d} {solver:8s} {a['seconds']:10.2f} {b['seconds']:10.2f} "
                      f"{b['seconds'] / a['seconds']:7.2f}x {a['peak_rss_mb']:11.0f} {b['peak_rss_mb']:11.0f} "
                      f"{a['peak_rss_mb'] / max(b['peak_rss_mb'], 1):11.2f}x {pct(a['accuracy']):>12s} "
                      f"{pct(b['accuracy']):>12s}", flush=True)


if __name__ == "__main__":
    main()
