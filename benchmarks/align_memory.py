"""Peak memory of weight matching, as a multiple of one model's size (the baseline measured in the same run).

In memory (`mf.align` on two loaded models): the resident-set high-water mark above what the process
holds once both models are loaded and the spec inferred, over the bytes of one model; each case runs in
a fresh process and resets the mark first (`/proc/self/clear_refs`). Goal: <= 2.5x.
Streamed (`mf.hf.align_folders` on two Hugging Face folders of GPT-2's shape, random weights, written
first under runs/bench/): the high-water mark above the process after its imports, over one model's
bytes; goal <= 1.5x. Also the seconds per sweep.

Run: .venv/bin/python benchmarks/align_memory.py [--gpt2 small|medium|xl]   (Linux)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r'''
import json, sys, time
import torch
case, arg = sys.argv[1], sys.argv[2]

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

def high_water():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

import modefuse as mf
from modefuse import hf
from modefuse.storage import lazystate
if case == "mlp":
    w = int(arg)
    a, b = [mf.models.build("mlp", widths=[w] * 3, seed=s).eval() for s in (0, 1)]
    x = torch.rand(2, 1, 28, 28)
    spec = mf.infer_spec(a, x)
    one = sum(t.numel() * t.element_size() for t in a.state_dict().values())
    reset(); base = rss(); t = time.perf_counter()
    res = mf.align(a, b, method="weight", spec=spec)
    sweeps = len(res.history)
else:
    root = arg
    one = lazystate.LazyState(root + "/a").nbytes()
    reset(); base = rss(); t = time.perf_counter()
    res = hf.align_folders(root + "/a", root + "/b", root + "/aligned", progress=False)
    sweeps = len(res.history)
dt = time.perf_counter() - t
print(json.dumps({"model_mb": one / 2**20, "peak_mb": (high_water() - base) / 2**20, "ratio": (high_water() - base) / one,
                  "seconds": dt, "sweeps": sweeps}))
'''

GPT2 = {"small": dict(n_embd=768, n_layer=12, n_head=12), "medium": dict(n_embd=1024, n_layer=24, n_head=16),
        "xl": dict(n_embd=1600, n_layer=48, n_head=25)}


def run(case: str, arg: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, case, arg], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{case} {arg} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_folders(size: str) -> Path:
    """Two GPT-2-shaped folders with random weights (seeds 0 and 1), written once."""
    import torch
    import transformers
    root = Path("runs/bench") / f"gpt2-{size}"
    for name, seed in (("a", 0), ("b", 1)):
        if not (root / name / "config.json").is_file():
            torch.manual_seed(seed)
            model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2[size]))
            model.save_pretrained(root / name)
            del model
    return root


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpt2", choices=list(GPT2), help="also align two GPT-2-shaped folders, streamed")
    args = p.parse_args()
    print(f"{'case':34s} {'model MB':>9s} {'peak MB':>9s} {'x model':>8s} {'seconds':>8s} {'sweeps':>6s}")
    cases = [("mlp", "512", "mlp 784-512x3-10, in memory"), ("mlp", "2048", "mlp 784-2048x3-10, in memory"), ("mlp", "4096", "mlp 784-4096x3-10, in memory")]
    if args.gpt2:
        t = time.perf_counter()
        root = make_folders(args.gpt2)
        print(f"(GPT-2 {args.gpt2} folders ready in {time.perf_counter() - t:.0f} s)")
        cases.append(("folder", str(root), f"GPT-2 {args.gpt2} folders, streamed"))
    for case, arg, label in cases:
        r = run(case, arg)
        print(f"{label:34s} {r['model_mb']:9.0f} {r['peak_mb']:9.0f} {r['ratio']:7.2f}x {r['seconds']:8.1f} "
              f"{r['sweeps']:6d}", flush=True)


if __name__ == "__main__":
    main()
