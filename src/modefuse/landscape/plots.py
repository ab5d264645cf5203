"""Figures, written atomically as PNG (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..storage.atomic import atomic_path  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_paths(paths: Mapping[str, object], path: str | os.PathLike, title: str = "") -> None:
    """Loss and accuracy against alpha for each labelled `mf.PathMetrics`, barriers in the legend."""
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


def plot_plane(plane, path: str | os.PathLike, title: str = "") -> None:
    """Filled contours of loss (log scale) and accuracy over a plane, the anchor models marked."""
    import numpy as np
    from matplotlib.colors import LogNorm
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    x, y = np.array(plane.xs), np.array(plane.ys)
    panels = [("test loss", np.array(plane.loss), "viridis_r", True),
              ("test accuracy (%)", 100 * np.array(plane.accuracy), "viridis", False)]
    for ax, (label, z, cmap, log) in zip(axes, panels):
        if log:
            z = np.clip(z, 1e-3, None)
            levels = np.geomspace(z.min(), z.max(), 25)
            cs = ax.contourf(x, y, z, levels=levels, cmap=cmap, norm=LogNorm(z.min(), z.max()))
        else:
            cs = ax.contourf(x, y, z, levels=25, cmap=cmap)
        fig.colorbar(cs, ax=ax, label=label, format="%.2f" if log else "%.0f")
        for (name, (px, py)), marker in zip(plane.anchors.items(), ("o", "s", "^")):
            ax.plot(px, py, marker, color="white", mec="black", ms=9)
            ax.annotate(name, (px, py), textcoords="offset points", xytext=(6, 6), fontsize=9, color="white",
                        bbox=dict(boxstyle="round,pad=0.2", fc="black", alpha=0.5))
        ax.set_aspect("equal")
        ax.set_title(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curve(paths: Mapping[str, object], path: str | os.PathLike, title: str = "") -> None:
    """Test accuracy (and robust accuracy, when measured) along curves and paths, t from 0 to 1."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, p in paths.items():
        ts = getattr(p, "ts", None) or getattr(p, "alphas")
        ax.plot(ts, [100 * a for a in p.accuracy], marker="o", ms=2, label=f"{label}")
        robust = getattr(p, "robust_accuracy", None)
        if robust:
            ax.plot(ts, [100 * a for a in robust], ls="--", label=f"{label}, robust")
    ax.set(xlabel="t  (0 = model A, 1 = model B)", ylabel="test accuracy (%)", title=title or "accuracy along the path")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
