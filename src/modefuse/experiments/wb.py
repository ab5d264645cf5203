"""The Wasserstein-barycenter paper's experiments (Akash et al. 2023): fusion tables and loss planes."""
from __future__ import annotations

import copy

from .. import data as mfdata
from ..align import align
from ..bn import has_batchnorm, reset_bn
from ..fuse import fuse
from ..plane import plane
from ..plots import plot_couplings
from ..training import evaluate, train
from .runner import Run, experiment



def _acc(model, data) -> float:
    return evaluate(model, data)["accuracy"]


def _finetuned(model, train_data, s: dict, seed: int = 0) -> float:
    m = copy.deepcopy(model)
    train(m, train_data, epochs=s["finetune_epochs"], lr=1e-4, seed=seed, progress=False)
    return m


def _fusion_rows(ctx: Run, models, train_data, test, methods=("average", "otfusion", "wasserstein"), **kw):
    """One row per method: accuracy before and after fine-tuning."""
    s = ctx.settings
    rows = []
    for method in methods:
        fused = fuse(models, method=method, **kw).model
        if has_batchnorm(fused):
            reset_bn(fused, train_data)
        before = _acc(fused, test)
        after = _acc(_finetuned(fused, train_data, s), test)
        rows.append([method, before, after])
        ctx.results.setdefault("fusion", {})[f"K={len(models)} {method}"] = {"before": before, "after": after}
    return rows


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
        rows = [["inputs (mean)", sum(accs) / k, ""], ["inputs (best)", max(accs), ""]]
        rows += _fusion_rows(ctx, models[:k], train_data, test)
        ctx.table(f"K = {k} models", ["model", "test accuracy", "accuracy after fine-tuning"], rows)


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
    rows = [[f"input {i} (labels {sorted(set(h.targets.tolist()))})", _acc(m, test), ""]
            for i, (m, h) in enumerate(zip(split_models, halves))]
    rows += _fusion_rows(ctx, split_models, train_data, test)
    ctx.table("Two models trained on disjoint label sets (evaluated on all classes)",
              ["model", "test accuracy", "accuracy after fine-tuning"], rows)
    models = [ctx.model(f"width{i}", "mlp", train_data, seed=i, epochs=s["epochs"], model_kwargs={"widths": w})
              for i, w in enumerate(s["widths"])]
    rows = [[f"input {'-'.join(map(str, w))}", _acc(m, test), ""] for w, m in zip(s["widths"], models)]
    rows += _fusion_rows(ctx, models, train_data, test, methods=("wasserstein",), widths=s["target"])
    rows[-1][0] = f"wasserstein into {'-'.join(map(str, s['target']))}"
    ctx.table("Models of different widths fused into a third width", ["model", "test accuracy",
                                                                     "accuracy after fine-tuning"], rows)


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
        rows = [[f"input {i}", _acc(m, test), ""] for i, m in enumerate(models)]
        rows += _fusion_rows(ctx, models, train_data, test)
        ctx.table(label, ["model", "test accuracy", "accuracy after fine-tuning"], rows)


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
        rows = [[f"input {i}", _acc(m, test), ""] for i, m in enumerate(models)]
        rows += _fusion_rows(ctx, models, train_data, test, methods=("average", "wasserstein", "gromov"))
        rows[-2][0] = "WB, hidden-to-hidden ignored"
        rows[-1][0] = "GWB (hidden-to-hidden matched)"
        ctx.table(arch.upper(), ["model", "test accuracy", "accuracy after fine-tuning"], rows)


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
