"""Mean and minimum test accuracy along the linear path, the unaligned, aligned and PAM curves of one pair.

Two small CNNs (VGG11 layout at width 1/4, no BatchNorm) trained on Fashion-MNIST with seeds 0 and 1
(cached in runs/curves/), then a quadratic Bezier curve per variant, all trained for the same number
of epochs. Run: .venv/bin/python examples/curves_table.py [--epochs 3] [--train-size 20000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import modefuse as mf
from modefuse.storage.atomic import write_text
from modefuse.zoo.train_or_load import trained


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--points", type=int, default=33)
    p.add_argument("--out", default="runs/curves")
    args = p.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    train = mf.data.load("fashion-mnist", "train").subset(range(args.train_size))
    test = mf.data.load("fashion-mnist", "test")
    a, b = (trained(out / f"cnn_s{s}.safetensors", "vgg", train, seed=s, epochs=5, model_kwargs={"width": 0.25})
            for s in (0, 1))
    rows = {}
    linear = mf.interpolate(a, b, test, steps=args.points)
    rows["linear path"] = (sum(linear.accuracy) / len(linear.accuracy), min(linear.accuracy))
    for label, kw in (("unaligned curve", {}), ("aligned curve (activation)", {"align": "activation"})):
        c = mf.fit_curve(a, b, train, epochs=args.epochs, **kw)
        ev = c.evaluate(test, n=args.points)
        rows[label] = (ev.mean_accuracy, ev.min_accuracy)
    c = mf.pam(a, b, train, rounds=args.epochs)
    ev = c.evaluate(test, n=args.points)
    rows["PAM curve"] = (ev.mean_accuracy, ev.min_accuracy)
    ends = [mf.evaluate(m, test)["accuracy"] for m in (a, b)]
    lines = [f"Endpoints: {100 * ends[0]:.1f}% and {100 * ends[1]:.1f}% test accuracy; curves trained "
             f"{args.epochs} epochs on {args.train_size} images; {args.points} points along each.", "",
             "| path | mean accuracy | min accuracy |", "|---|---|---|"]
    lines += [f"| {k} | {100 * m:.1f}% | {100 * n:.1f}% |" for k, (m, n) in rows.items()]
    lines += ["", f"PAM rounds: {c.pam_history}", f"({time.perf_counter() - t0:.0f} s)"]
    write_text(out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
