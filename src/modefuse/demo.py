"""`make demo`: train two MLPs on Fashion-MNIST, align them, plot naive vs aligned interpolation, fuse them.

Finished models are reused when the demo is run again (see `modefuse.zoo.train_or_load`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import modefuse as mf
from modefuse.storage.atomic import write_json, write_text
from modefuse.landscape.plots import plot_couplings, plot_paths
from modefuse.zoo.train_or_load import trained


def run(out: Path, epochs: int = 5, seeds=(0, 1), data_dir: str | None = None) -> dict:
    t0 = time.perf_counter()
    train_ds = mf.data.load("fashion-mnist", "train", data_dir)
    test_ds = mf.data.load("fashion-mnist", "test", data_dir)
    summary: dict = {"dataset": "fashion-mnist", "model": "mlp 784-512-512-512-10", "epochs": epochs,
                     "models": {}}
    nets = {}
    for seed in seeds:
        name = f"mlp_seed{seed}"
        print(f"[demo] training {name} ({epochs} epochs of Adam) -> {out / (name + '.safetensors')}")
        nets[name] = trained(out / f"{name}.safetensors", "mlp", train_ds, seed=seed, epochs=epochs,
                             test_data=test_ds, model_kwargs={"widths": [512, 512, 512]})
        summary["models"][name] = mf.evaluate(nets[name], test_ds)
        print(f"[demo] {name}: test accuracy {summary['models'][name]['accuracy']:.4f}")
    a, b = nets["mlp_seed0"], nets["mlp_seed1"]
    print("[demo] aligning mlp_seed1 to mlp_seed0 by weight matching")
    aligned = mf.align(a, b, method="weight", seed=0)
    mf.save(aligned.model, out / "mlp_seed1_to_seed0.safetensors", dataset="fashion-mnist",
            aligned_to="mlp_seed0", alignment_method="weight")
    paths = {"naive": mf.interpolate(a, b, test_ds), "aligned (weight matching)": mf.interpolate(a, aligned.model,
                                                                                                 test_ds)}
    plot_paths(paths, out / "interpolation.png", title="MLP 512x3 on Fashion-MNIST: seed 0 (alpha 0) to seed 1")
    summary["interpolation"] = {k: {"loss_barrier": p.loss_barrier, "accuracy_barrier": p.accuracy_barrier}
                                for k, p in paths.items()}
    print("[demo] fusing the two models")
    fusion = {"vanilla averaging": mf.fuse([a, b], method="average").model}
    for method in ("otfusion", "wasserstein"):
        fusion[method] = mf.fuse([a, b], method=method).model
    wb = mf.fuse([a, b], method="wasserstein")
    fusion["wasserstein + REPAIR"] = mf.repair(wb.model, [a, b], train_ds, couplings=wb.couplings)
    fusion["regmean (with data: the default)"] = mf.fuse([a, b], data=train_ds).model
    mf.save(fusion["wasserstein"], out / "fused_wasserstein.safetensors", dataset="fashion-mnist",
            fused_from=list(nets), fusion_method="wasserstein")
    plot_couplings(wb.couplings, out / "couplings.png")
    summary["fusion"] = {k: mf.evaluate(m, test_ds) for k, m in fusion.items()}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", _markdown(summary))
    print(_markdown(summary))
    return summary


def _markdown(s: dict) -> str:
    lines = [f"# modefuse demo ({s['dataset']}, {s['model']}, {s['epochs']} epochs)", "",
             "| model | test loss | test accuracy |", "|---|---|---|"]
    lines += [f"| {k} | {v['loss']:.4f} | {v['accuracy']:.4f} |" for k, v in s["models"].items()]
    if "interpolation" in s:
        lines += ["", "Linear interpolation between the two (test set, 25 points; plot: interpolation.png):", "",
                  "| path | loss barrier | accuracy barrier (points) |", "|---|---|---|"]
        lines += [f"| {k} | {v['loss_barrier']:.4f} | {100 * v['accuracy_barrier']:.2f} |"
                  for k, v in s["interpolation"].items()]
    if "fusion" in s:
        lines += ["", "Fusion of the two into one model (plot of the couplings: couplings.png):", "",
                  "| method | test loss | test accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {v['loss']:.4f} | {v['accuracy']:.4f} |" for k, v in s["fusion"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    try:
        run(Path(args.out), args.epochs, data_dir=args.data_dir)
    except mf.ModefuseError as e:
        print(f"modefuse demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
