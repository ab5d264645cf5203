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
