"""Figures, written atomically as PNG (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_path  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_paths(paths: Mapping[str, object], path: str | os.PathLike, title: str = "") -> None:
    """Loss and accuracy against alpha for each labelled `mf.Path`, barriers in the legend."""
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    for label, p in paths.items():
        ax_l.plot(p.alphas, p.loss, marker="o", ms=3, label=f"{label} (barrier {p.loss_barrier:.3f})")
        ax_a.plot(p.alphas, [100 * a for a in p.accuracy], marker="o", ms=3,
                  label=f"{label} (barrier {100 * p.accuracy_barrier:.1f} pts)")
    ax_l.set(xlabel="alpha  (0 = model A, 1 = model B)", ylabel="test loss", title="loss")
    ax_a.set(xlabel="alpha  (0 = model A, 1 = model B)", ylabel="test accuracy (%)", title="accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_couplings(couplings: Mapping[str, list], path: str | os.PathLike, max_groups: int = 6,
                   zoom: int = 48) -> None:
    """Heat maps of the couplings (rows: target units, columns: model units), one row of panels per group.

    A coupling close to a permutation (one bright cell per row and column, after sorting) is the
    WB paper's evidence that the models lie in one basin up to permutation. Columns are sorted by the
    target unit they send most mass to; the first `zoom` target units are shown, so cells stay visible.
    """
    import numpy as np
    groups = list(couplings)[:max_groups]
    k = max(len(couplings[g]) for g in groups)
    fig, axes = plt.subplots(len(groups), k, figsize=(2.6 * k, 2.4 * len(groups)), squeeze=False)
    for r, g in enumerate(groups):
        for c in range(k):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(couplings[g]):
                ax.axis("off")
                continue
            pi = couplings[g][c].detach().float().cpu().numpy()
            order = np.argsort(pi.argmax(axis=0), kind="stable")  # columns sorted by their target unit
            shown = (pi[:, order] * pi.shape[0])[:zoom, : max(1, zoom * pi.shape[1] // pi.shape[0])]
            ax.imshow(shown, cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            if r == 0:
                ax.set_title(f"model {c}", fontsize=9)
            if c == 0:
                ax.set_ylabel(g, fontsize=8)
    fig.suptitle(f"couplings x n_target (first {zoom} target units x model units, columns sorted)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
