"""The Wasserstein-barycenter paper's experiments (Akash et al. 2023): fusion tables and loss planes."""
from __future__ import annotations

import copy

from ..zoo import data as mfdata
from ..match.align import align
from ..merge.bn import has_batchnorm, reset_bn
from ..merge.fuse import fuse
from ..landscape.plane import plane
from ..landscape.plots import plot_couplings
from ..merge.repair import repair
from ..zoo.training import evaluate, train
from ..zoo.recipe import Recipe
from .base import Run, experiment



def _acc(model, data) -> float:
    return evaluate(model, data)["accuracy"]


def _finetuned(model, train_data, s: dict, seed: int = 0) -> float:
    m = copy.deepcopy(model)
    train(m, train_data, Recipe(epochs=s["finetune_epochs"], lr=1e-4, seed=seed), progress=False)
    return m


# (row label, fuse arguments): the paper's weight cost, with outgoing weights, the activation cost, and
# beyond the papers: RegMean after alignment, ZipIt!
VARIANTS = (("average", {"method": "average"}),
            ("otfusion, weight cost (paper)", {"method": "otfusion", "cost": "weight", "outgoing": False}),
            ("wasserstein, weight cost (paper)", {"method": "wasserstein", "cost": "weight", "outgoing": False}),
            ("otfusion, in+out weights", {"method": "otfusion", "cost": "weight", "outgoing": True}),
            ("wasserstein, in+out weights", {"method": "wasserstein", "cost": "weight", "outgoing": True}),
            ("otfusion, activation cost", {"method": "otfusion", "cost": "activation"}),
            ("wasserstein, activation cost", {"method": "wasserstein", "cost": "activation"}),
            ("regmean, aligned by activations", {"method": "regmean", "cost": "activation"}),
            ("zipit", {"method": "zipit"}))
HEADER = ["model", "test accuracy", "accuracy + REPAIR", "accuracy after fine-tuning"]


def _fusion_rows(ctx: Run, models, train_data, test, variants=VARIANTS, **kw):
    """One row per variant: one-shot accuracy, with REPAIR, and after fine-tuning the one-shot model."""
    s = ctx.settings
    rows = []
    for label, args in variants:
        fus = fuse(models, data=train_data, **args, **kw)
        if has_batchnorm(fus.model):
            reset_bn(fus.model, train_data)
        before = _acc(fus.model, test)
        repaired = _acc(repair(fus.model, models, train_data, couplings=fus.couplings or None), test)
        after = _acc(_finetuned(fus.model, train_data, s), test)
        rows.append([label, before, repaired, after])
        ctx.results.setdefault("fusion", {})[f"K={len(models)} {label}"] = {
            "before": before, "repair": repaired, "after": after}
    return rows


def _input_rows(models, test, label=lambda i: f"input {i}") -> list[list]:
    return [[label(i), _acc(m, test), "", ""] for i, m in enumerate(models)]


@experiment("wb-mlp", "fusion of 2, 4 and 6 MLPs (400-200-100) trained on the same data: inputs, vanilla "
            "averaging, OTFusion and WB, before and after fine-tuning",
            {"tiny": {"lr": 0.01, "ks": [2, 3], "widths": [32, 16, 8], "epochs": 2, "finetune_epochs": 1, "n_train": 2048,
                      "n_test": 256},
             "quick": {"ks": [2, 4, 6], "widths": [400, 200, 100], "epochs": 2, "finetune_epochs": 1},
             "full": {"ks": [2, 4, 6], "widths": [400, 200, 100], "epochs": 10, "finetune_epochs": 2}})
def wb_mlp(ctx: Run) -> None:
    s = ctx.settings
    train_data, test = ctx.data("train"), ctx.data("test")
    models = [ctx.model(f"mlp_s{i}", "mlp", train_data, seed=i, epochs=s["epochs"],
                        model_kwargs={"widths": s["widths"]}) for i in range(max(s["ks"]))]
    for k in s["ks"]:
        accs = [_acc(m, test) for m in models[:k]]
        ctx.log(f"fusing {k} models")
        rows = [["inputs (mean)", sum(accs) / k, "", ""], ["inputs (best)", max(accs), "", ""]]
        rows += _fusion_rows(ctx, models[:k], train_data, test)
        ctx.table(f"K = {k} models", HEADER, rows)


@experiment("wb-hetero", "fusion of models trained on different label splits of the data, and of models of "
            "different widths (400-200-100 and 200-100-50) into a chosen width (300-150-75)",
            {"tiny": {"lr": 0.01, "widths": [[32, 16, 8], [16, 8, 4]], "target": [24, 12, 6], "epochs": 2,
                      "finetune_epochs": 1, "n_train": 2048, "n_test": 256},
             "quick": {"widths": [[400, 200, 100], [200, 100, 50]], "target": [300, 150, 75], "epochs": 2,
                       "finetune_epochs": 1},
             "full": {"widths": [[400, 200, 100], [200, 100, 50]], "target": [300, 150, 75], "epochs": 10,
                      "finetune_epochs": 2}})
def wb_hetero(ctx: Run) -> None:
    s = ctx.settings
    train_data, test = ctx.data("train"), ctx.data("test")
    halves = mfdata.split(train_data, 2, mode="labels", seed=0)
    split_models = [ctx.model(f"labels{i}", "mlp", h, seed=i, epochs=s["epochs"],
                              model_kwargs={"widths": s["widths"][0], "num_classes": 10})
                    for i, h in enumerate(halves)]
    rows = _input_rows(split_models, test, lambda i: f"input {i} (labels {sorted(set(halves[i].targets.tolist()))})")
    rows += _fusion_rows(ctx, split_models, train_data, test)
    ctx.table("Two models trained on disjoint label sets (evaluated on all classes)", HEADER, rows)
    models = [ctx.model(f"width{i}", "mlp", train_data, seed=i, epochs=s["epochs"], model_kwargs={"widths": w})
              for i, w in enumerate(s["widths"])]
    rows = _input_rows(models, test, lambda i: f"input {'-'.join(map(str, s['widths'][i]))}")
    into = "-".join(map(str, s["target"]))
    rows += _fusion_rows(ctx, models, train_data, test, widths=s["target"],
                         variants=[(f"{label} into {into}", args)
                                   for label, args in VARIANTS if args["method"] == "wasserstein"])
    ctx.table("Models of different widths fused into a third width", HEADER, rows)


@experiment("wb-cnn", "fusion of two VGG11 and two ResNet-18 (no BatchNorm, as in the paper): inputs, "
            "averaging, OTFusion, WB, before and after fine-tuning",
            {"tiny": {"lr": 0.01, "vgg_width": 0.0625, "resnet_width": 0.0625, "epochs": 2, "finetune_epochs": 1,
                      "n_train": 1024, "n_test": 128},
             "quick": {"vgg_width": 0.25, "resnet_width": 0.125, "epochs": 4, "finetune_epochs": 1,
                       "n_train": 20000, "n_test": 2000},
             "full": {"vgg_width": 1.0, "resnet_width": 1.0, "epochs": 30, "finetune_epochs": 5,
                      "full_dataset": "cifar10"}})
def wb_cnn(ctx: Run) -> None:
    s = ctx.settings
    train_data, test = ctx.data("train"), ctx.data("test")
    for label, arch, kw in (("VGG11", "vgg", {"width": s["vgg_width"]}),
                            ("ResNet-18", "resnet18", {"width": s["resnet_width"], "norm": "none"})):
        models = [ctx.model(f"{arch}_s{i}", arch, train_data, seed=i, epochs=s["epochs"], model_kwargs=kw)
                  for i in range(2)]
        rows = _input_rows(models, test)
        rows += _fusion_rows(ctx, models, train_data, test)
        ctx.table(label, HEADER, rows)


@experiment("wb-rnn", "RNN and LSTM reading image rows: averaging vs WB ignoring hidden-to-hidden weights vs GWB",
            {"tiny": {"lr": 0.01, "hidden": 16, "epochs": 2, "finetune_epochs": 1, "n_train": 2048, "n_test": 256},
             "quick": {"hidden": 128, "epochs": 2, "finetune_epochs": 1},
             "full": {"hidden": 256, "epochs": 10, "finetune_epochs": 2}})
def wb_rnn(ctx: Run) -> None:
    s = ctx.settings
    train_data, test = ctx.data("train"), ctx.data("test")
    for arch in ("rnn", "lstm"):
        models = [ctx.model(f"{arch}_s{i}", arch, train_data, seed=i, epochs=s["epochs"],
                            model_kwargs={"hidden": s["hidden"]}) for i in range(2)]
        rows = _input_rows(models, test)
        rows += _fusion_rows(ctx, models, train_data, test, variants=(
            ("average", {"method": "average"}),
            ("WB, weight cost, hidden-to-hidden ignored", {"method": "wasserstein", "cost": "weight"}),
            ("GWB, weight cost, hidden-to-hidden matched", {"method": "gromov", "cost": "weight"}),
            ("WB, activation cost", {"method": "wasserstein", "cost": "activation"})))
        ctx.table(arch.upper(), HEADER, rows)


@experiment("lmc-plane", "loss planes through model 1, model 2 and permuted model 2 for an MLP and a CNN, and "
            "the coupling heat maps",
            {"tiny": {"lr": 0.01, "resolution": 5, "epochs": 2, "mlp": [32, 32], "cnn_width": 0.0625, "n_train": 2048,
                      "n_test": 256},
             "quick": {"resolution": 15, "epochs": 3, "mlp": [512, 512, 512], "cnn_width": 0.25, "n_test": 2000},
             "full": {"resolution": 21, "epochs": 10, "mlp": [512, 512, 512], "cnn_width": 1.0}})
def lmc_plane(ctx: Run) -> None:
    s = ctx.settings
    train_data, test = ctx.data("train"), ctx.data("test")
    rows = []
    for label, arch, kw in (("MLP", "mlp", {"widths": s["mlp"]}), ("CNN", "vgg", {"width": s["cnn_width"]})):
        a, b = (ctx.model(f"{arch}_s{i}", arch, train_data, seed=i, epochs=s["epochs"], model_kwargs=kw)
                for i in range(2))
        c = align(a, b, method="weight").model
        ctx.log(f"{label}: {s['resolution']}x{s['resolution']} plane")
        p = plane(a, b, c, test, resolution=s["resolution"], progress=ctx.progress)
        p.plot(ctx.figure(f"plane_{arch}.png"), title=f"{label} on {ctx.dataset_name}")
        plot_couplings(fuse([a, b], method="wasserstein").couplings, ctx.figure(f"couplings_{arch}.png"))
        best = min(min(r) for r in p.loss)
        rows.append([label, p.anchor_accuracy["model 1"], p.anchor_accuracy["model 2"], best])
        ctx.results[label] = {"anchors": p.anchors, "anchor_accuracy": p.anchor_accuracy, "xs": p.xs, "ys": p.ys,
                              "loss": p.loss, "accuracy": p.accuracy}
    ctx.table("Plane anchors", ["model", "model 1 accuracy", "model 2 accuracy", "lowest loss on the grid"], rows)
