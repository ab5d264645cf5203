"""Ferbach et al. (2024): the midpoint barrier against width, and the effective dimension of the weights."""
from __future__ import annotations

import torch

from ..match.align import align
from ..landscape.interpolate import interpolate
from ..landscape.plots import plt, save_figure
from .base import Run, experiment

METHODS = ("naive", "weight", "weight_cov", "activation")


def participation_ratio(weight: torch.Tensor) -> float:
    """(tr S)^2 / tr(S^2) of the covariance S of a layer's neuron weight vectors (its rows)."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    w = w - w.mean(0)
    s = w.T @ w / w.shape[0]
    return float(torch.trace(s) ** 2 / torch.trace(s @ s))


@experiment("lmc-width", "midpoint loss barrier versus width for naive interpolation, weight matching, "
            "covariance-weighted weight matching and activation matching, and the participation ratio of the "
            "weights against the barrier",
            {"tiny": {"lr": 0.01, "widths": [8, 16], "depth": 2, "epochs": 2, "n_train": 2048, "n_test": 256},
             "quick": {"widths": [16, 32, 64, 128, 256, 512], "depth": 2, "epochs": 2, "n_test": 5000},
             "full": {"widths": [16, 32, 64, 128, 256, 512, 1024, 2048], "depth": 3, "epochs": 10}})
def lmc_width(ctx: Run) -> None:
    s = ctx.settings
    train_data, test = ctx.data("train"), ctx.data("test")
    rows, table = [], {m: [] for m in METHODS}
    ratios = []
    for w in s["widths"]:
        a, b = (ctx.model(f"mlp{w}_s{i}", "mlp", train_data, seed=i, epochs=s["epochs"],
                          model_kwargs={"widths": [w] * s["depth"]}) for i in range(2))
        barriers = {}
        for method in METHODS:
            other = b if method == "naive" else align(a, b, method=method, data=train_data).model
            path = interpolate(a, other, test, steps=3, progress=False)  # alpha 0, 1/2, 1
            barriers[method] = path.loss[1] - (path.loss[0] + path.loss[2]) / 2
            table[method].append(barriers[method])
        pr = participation_ratio(a.layers[0].weight)
        ratios.append(pr)
        rows.append([w, pr, *[barriers[m] for m in METHODS]])
        ctx.log(f"width {w}: " + ", ".join(f"{m} {barriers[m]:.3f}" for m in METHODS))
    ctx.results.update({"widths": s["widths"], "participation_ratio": ratios, "midpoint_barrier": table})
    ctx.table("Midpoint loss barrier by width (first hidden layer's participation ratio)",
              ["width", "participation ratio", *[f"barrier, {m}" for m in METHODS]], rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in METHODS:
        ax1.plot(s["widths"], table[m], marker="o", label=m)
        ax2.scatter(ratios, table[m], label=m)
    ax1.set(xscale="log", xlabel="hidden width", ylabel="midpoint loss barrier", title="barrier vs width")
    ax1.set_xticks(s["widths"], [str(w) for w in s["widths"]])
    ax1.minorticks_off()
    ax2.set(xlabel="participation ratio of layer-1 weights", ylabel="midpoint loss barrier",
            title="barrier vs effective dimension")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, ctx.figure("barrier_vs_width.png"))
