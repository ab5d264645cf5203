"""Tatro et al. (2020): curves between two CNNs, and robust curves between PGD-trained endpoints."""
from __future__ import annotations

from ..landscape.attack import PGD
from ..landscape.curves import fit_curve, pam
from ..landscape.interpolate import interpolate
from ..landscape.plots import plot_curve
from ..zoo.recipe import Recipe
from .base import Run, experiment


@experiment("curves", "linear path, unaligned, aligned and PAM curves between two CNNs (mean and minimum accuracy "
            "along each), and robust curves between PGD-trained endpoints (clean and robust accuracy)",
            {"tiny": {"lr": 0.01, "width": 0.0625, "epochs": 2, "curve_epochs": 1, "points": 5, "n_train": 1024, "n_test": 128,
                      "eps": 0.1, "robust_points": 3, "robust_limit": 64},
             "quick": {"width": 0.25, "epochs": 5, "curve_epochs": 2, "points": 17, "n_train": 20000,
                       "n_test": 2000, "eps": 0.1, "robust_points": 5, "robust_limit": 500, "robust_epochs": 2,
                       "robust_n_train": 10000},
             "full": {"width": 1.0, "epochs": 30, "curve_epochs": 20, "points": 65, "eps": 8 / 255,
                      "robust_points": 17, "robust_limit": 2000, "full_dataset": "cifar10"}})
def curves(ctx: Run) -> None:
    s = ctx.settings
    train_data, test = ctx.data("train"), ctx.data("test")
    kw = {"width": s["width"]}
    a, b = (ctx.model(f"cnn_s{i}", "vgg", train_data, seed=i, epochs=s["epochs"], model_kwargs=kw) for i in range(2))
    n = s["points"]
    evals = {"linear path": interpolate(a, b, test, steps=n, progress=False)}
    for label, align in (("unaligned curve", None), ("aligned curve", "activation")):
        ctx.log(f"training the {label}")
        evals[label] = fit_curve(a, b, train_data, align=align, recipe=Recipe(epochs=s["curve_epochs"]),
                                 progress=ctx.progress).evaluate(test, n=n)
    ctx.log("PAM")
    pam_curve = pam(a, b, train_data, rounds=s["curve_epochs"], recipe=Recipe(epochs=1), progress=ctx.progress)
    evals["PAM curve"] = pam_curve.evaluate(test, n=n)
    line = evals["linear path"].accuracy
    rows = [["endpoint A", line[0], line[0]], ["endpoint B", line[-1], line[-1]]]
    for label, ev in evals.items():
        rows.append([label, sum(ev.accuracy) / len(ev.accuracy), min(ev.accuracy)])
        ctx.results[label] = {"accuracy": ev.accuracy, "loss": ev.loss}
    ctx.results["pam_history"] = pam_curve.pam_history
    ctx.table("Curves between two CNNs", ["path", "mean accuracy", "min accuracy"], rows)
    plot_curve(evals, ctx.figure("curves.png"), title="test accuracy along each path")

    attack = PGD(eps=s["eps"], steps=5, step_size=s["eps"] / 4, seed=0)
    robust_data = train_data.subset(range(min(s.get("robust_n_train", len(train_data)), len(train_data))))
    ra, rb = (ctx.model(f"cnn_robust_s{i}", "vgg", robust_data, seed=i, epochs=s.get("robust_epochs", s["epochs"]),
                        model_kwargs=kw, perturb=attack) for i in range(2))
    m = s["robust_points"]
    robust = {"linear path": interpolate(ra, rb, test, steps=m, attack=attack, attack_limit=s["robust_limit"],
                                         progress=False)}
    for label, align in (("unaligned robust curve", None), ("aligned robust curve", "activation")):
        ctx.log(f"training the {label}")
        c = fit_curve(ra, rb, robust_data, align=align, adversarial=attack, recipe=Recipe(epochs=s["curve_epochs"]),
                      progress=ctx.progress)
        robust[label] = c.evaluate(test, n=m, attack=attack, limit=s["robust_limit"])
    line = robust["linear path"]
    rows = [[f"endpoint {x}", line.accuracy[i], line.accuracy[i], line.robust_accuracy[i], line.robust_accuracy[i]]
            for x, i in (("A", 0), ("B", -1))]
    rows += [[label, sum(e.accuracy) / m, min(e.accuracy), sum(e.robust_accuracy) / m, min(e.robust_accuracy)]
             for label, e in robust.items()]
    for label, e in robust.items():
        ctx.results[f"robust: {label}"] = {"accuracy": e.accuracy, "robust_accuracy": e.robust_accuracy}
    ctx.table(f"Robust curves between PGD-trained CNNs (L-inf eps {s['eps']:.3f})",
              ["path", "mean clean", "min clean", "mean robust", "min robust"], rows)
    plot_curve(robust, ctx.figure("robust_curves.png"), title="clean (solid) and robust (dashed) accuracy")
