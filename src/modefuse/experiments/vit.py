"""Transformers: two ViTs trained from different seeds, aligned and fused (Imfeld et al., ICLR 2024,
"Transformer Fusion with Optimal Transport", on our small ViT and Fashion-MNIST).

Attention is aligned with heads moved as blocks and the Q/K and V/O orders within them (the spec
inferred from the exported graph); the residual stream is one group through every block.
"""
from __future__ import annotations

from ..match.align import align
from ..landscape.interpolate import interpolate
from ..landscape.plots import plot_paths
from .base import Run, experiment
from .wb import HEADER, _fusion_rows, _input_rows

ALIGNMENTS = ("naive", "weight", "activation")
VARIANTS = (("average", {"method": "average"}),
            ("otfusion, weight cost", {"method": "otfusion", "cost": "weight"}),
            ("otfusion, activation cost", {"method": "otfusion", "cost": "activation"}))


@experiment("vit-lmc", "two ViTs from different seeds: loss and accuracy barriers of the straight path, naive "
            "and aligned (weight, activation matching), and fusion (average, OTFusion with each cost, + REPAIR, "
            "fine-tuned)",
            {"tiny": {"width": 32, "depth": 2, "heads": 2, "epochs": 1, "n_train": 2048, "n_test": 512,
                      "finetune_epochs": 1, "steps": 5},
             "quick": {"width": 128, "depth": 4, "heads": 4, "epochs": 3, "n_train": 30000, "n_test": 5000,
                       "finetune_epochs": 1, "steps": 9},
             "full": {"width": 256, "depth": 6, "heads": 8, "epochs": 20, "finetune_epochs": 2, "steps": 11}})
def vit_lmc(ctx: Run) -> None:
    s = ctx.settings
    train_data, test = ctx.data("train"), ctx.data("test")
    arch = {"width": s["width"], "depth": s["depth"], "heads": s["heads"]}
    a, b = (ctx.model(f"vit_s{i}", "vit", train_data, seed=i, epochs=s["epochs"], model_kwargs=arch)
            for i in range(2))
    paths, rows, aligned = {}, [], {}
    for method in ALIGNMENTS:
        other = b if method == "naive" else align(a, b, method=method, data=train_data).model
        aligned[method] = other
        path = interpolate(a, other, test, steps=s["steps"], progress=False)
        paths[method] = path
        mid = path.accuracy[len(path.alphas) // 2]
        ends = (path.accuracy[0] + path.accuracy[-1]) / 2
        rows.append([method, path.loss_barrier, path.accuracy_barrier, mid, ends - mid])
        ctx.results.setdefault("barriers", {})[method] = {**path.to_dict(), "midpoint_accuracy": mid,
                                                          "midpoint_gap": ends - mid}
        ctx.log(f"{method}: loss barrier {path.loss_barrier:.3f}, midpoint accuracy {100 * mid:.1f}%")
    ctx.table("Straight path between the two ViTs", ["alignment", "loss barrier", "accuracy barrier",
                                                     "midpoint accuracy", "midpoint accuracy below the endpoints' mean"],
              rows)
    plot_paths(paths, ctx.figure("vit_paths.png"), title="ViT: naive and aligned straight paths")
    fusion = _input_rows([a, b], test) + _fusion_rows(ctx, [a, b], train_data, test, variants=VARIANTS)
    fusion += _fusion_rows(ctx, [a, aligned["weight"]], train_data, test,  # Git Re-Basin: align, then average
                           variants=(("weight matching + average", {"method": "average"}),))
    ctx.table("Fusion of the two ViTs (one-shot, + REPAIR, after fine-tuning the one-shot model)", HEADER, fusion)
