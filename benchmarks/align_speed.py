"""Weight matching: modefuse against the `rebasin` package (PyPI, its PermutationCoordinateDescent), same models.

Prints, per model: mean wall time of each over seeds 0..--repeats-1 (after a warm-up), the speed ratio, and the
quality each reaches: the worst loss barrier over those seeds on the Fashion-MNIST test set for the trained MLP pair, and
the weight-matching objective sum_k <W_a[k], W_b_aligned[k]> (higher is better) for every model.
The MLP pair (784-512-512-512-10, 5 epochs of Adam, seeds 0 and 1) is trained once into runs/bench/.
ResNet-20 at width x4 and x16 is compared at initialization (seeds 0 and 1): training them is out of
reach on 2 CPU cores, and matching time does not depend on training. So are two transformers: BERT-tiny's
shape (Hugging Face `BertModel`, 2 layers, width 128, 2 heads) and the zoo's ViT (width 128, 4 blocks, 4
heads); where rebasin cannot run a model, its column says so. "output change" is the largest relative change of
the aligned model's outputs (a permutation must leave them as they were). "modefuse s" is the first alignment of an
architecture (both spec caches cleared before each run: it exports), "trace s" the export and spec inference within
it; "cached s" is an alignment in a new process once the architecture's spec is on disk (`speccache`), and "trace"
the share of spec inference in it. "speed-up" is rebasin's time over the first alignment's, "cached" over the
cached one's.

With `--device cuda` every model and input lives on the GPU, for both: our score products run there and each
assignment on the CPU (scipy); rebasin runs as it does on that device. Compare ratios within one run only.

Run: .venv/bin/pip install rebasin==0.0.47 && .venv/bin/python benchmarks/align_speed.py [--skip-x16] [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import torch

os.environ["MODEFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="align-speed-cache-")  # not the user's cache
import modefuse as mf  # noqa: E402
from modefuse.spec import cache as speccache  # noqa: E402
from modefuse.zoo.train_or_load import trained  # noqa: E402


def objective(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return sum(float((sa[k].double().cpu() * sb[k].double().cpu()).sum()) for k in sa if sa[k].is_floating_point())


def forget_specs(disk: bool) -> None:
    """Clear the in-process spec cache (as a new process would start) and, if `disk`, the on-disk one."""
    sys.modules["modefuse.spec.infer"]._CACHE.clear()
    if disk:
        speccache.clear()


def ours(a, b, x, seed):
    forget_specs(disk=True)  # every run pays for export and spec inference, as the first one in a new process
    return mf.align(a, b, method="weight", example_input=x, seed=seed).model


def ours_cached(a, b, x, seed):
    forget_specs(disk=False)  # a new process whose architecture was aligned before: the spec comes from disk
    return mf.align(a, b, method="weight", example_input=x, seed=seed).model


def output_change(b, aligned, x) -> float:
    """Largest change of the outputs on `x` that the alignment made (0 up to rounding: the same function)."""
    with torch.no_grad():
        y, z = b(x), aligned.to(x.device)(x)
    y, z = (getattr(v, "last_hidden_state", v) for v in (y, z))
    return float((y - z).abs().max() / y.abs().max())


def trace_time(a, x, disk: bool) -> float:
    forget_specs(disk)
    t0 = time.perf_counter()
    mf.infer_spec(a, x)
    return time.perf_counter() - t0


def theirs(a, b, x, seed):
    from rebasin import PermutationCoordinateDescent
    torch.manual_seed(seed)  # rebasin draws its group order from torch's global generator
    bb = copy.deepcopy(b)
    PermutationCoordinateDescent(a, bb, x, device_a=x.device, device_b=x.device).rebasin()  # else it picks cuda
    return bb


def mean_time(fn, *args, repeats):
    """Mean wall time over seeds 0..repeats-1 (the number of sweeps depends on the group order)."""
    times, outs = [], []
    for seed in range(repeats):
        t0 = time.perf_counter()
        outs.append(fn(*args, seed))
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the permuted copy may still be queued on the GPU
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times), outs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-x16", action="store_true", help="leave out ResNet-20 x16 (the slowest case)")
    p.add_argument("--skip-trained", action="store_true", help="leave out the trained MLP (no dataset needed)")
    p.add_argument("--device", default="cpu", help="where the models live (cuda: products on the GPU)")
    args = p.parse_args()
    try:
        import rebasin  # noqa: F401
    except ImportError:
        raise SystemExit("install the baseline first: .venv/bin/pip install rebasin==0.0.47")
    cases = []
    if not args.skip_trained:
        train = mf.data.load("fashion-mnist", "train")
        test = mf.data.load("fashion-mnist", "test")
        mlp = [trained(f"runs/bench/mlp512x3_seed{s}.safetensors", "mlp", train, seed=s, epochs=5,
                       model_kwargs={"widths": [512, 512, 512]}) for s in (0, 1)]
        cases.append(("MLP 784-512x3-10 (trained)", mlp, torch.rand(2, 1, 28, 28)))
    cases += [("MLP 784-512x3-10 (init)", [mf.models.build("mlp", widths=[512] * 3, seed=s).eval() for s in (0, 1)],
              torch.rand(2, 1, 28, 28))]
    widths = (4,) if args.skip_x16 else (4, 16)
    for w in widths:
        pair = [mf.models.build("resnet20", width=w, in_channels=1, seed=s).eval() for s in (0, 1)]
        cases.append((f"ResNet-20 x{w} (init)", pair, torch.rand(2, 1, 28, 28)))
    cases += transformers_cases()
    dev = torch.device(args.device)
    cases = [(label, [m.to(dev) for m in pair], x.to(dev)) for label, pair, x in cases]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, models on {where}; "
          f"mean over {args.repeats} seeds")
    print(f"{'model':28s} {'modefuse s':>10s} {'trace s':>8s} {'cached s':>8s} {'trace':>5s} {'rebasin s':>10s} "
          f"{'speed-up':>9s} {'cached':>7s} {'objective ours/theirs':>22s} {'output change ours/theirs':>26s} "
          f"{'loss barrier ours / theirs / naive':>36s}")
    for label, (a, b), x in cases:
        ours(a, b, x, 0)  # warm-up: tracing machinery, thread pools
        t_ours, m_ours = mean_time(ours, a, b, x, repeats=args.repeats)
        t_trace = trace_time(a, x, disk=True)
        t_cached, _ = mean_time(ours_cached, a, b, x, repeats=args.repeats)
        share = trace_time(a, x, disk=False) / t_cached
        head = f"{label:28s} {t_ours:10.3f} {t_trace:8.3f} {t_cached:8.3f} {share:5.0%}"
        try:
            t_theirs, m_theirs = mean_time(theirs, a, b, x, repeats=args.repeats)
        except Exception as e:  # rebasin traces with torchview and knows fewer layer kinds
            print(f"{head} {'fails':>10s}  ({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:60] if str(e) else ''})", flush=True)
            continue
        ratio = sum(objective(a, m) for m in m_ours) / sum(objective(a, m) for m in m_theirs)
        change = f"{max(output_change(b, m, x) for m in m_ours):.1e} / {max(output_change(b, m, x) for m in m_theirs):.1e}"
        barrier = ""
        if "trained" in label:
            a_, b_ = (copy.deepcopy(m).cpu() for m in (a, b))  # evaluated on the CPU, as the data is
            lb = [max(mf.interpolate(a_, copy.deepcopy(m).cpu(), test, progress=False).loss_barrier for m in ms)
                  for ms in (m_ours, m_theirs)]
            barrier = f"{lb[0]:.4f} / {lb[1]:.4f} / {mf.interpolate(a_, b_, test, progress=False).loss_barrier:.3f}"
        print(f"{head} {t_theirs:10.3f} {t_theirs / t_ours:8.1f}x {t_theirs / t_cached:6.1f}x {ratio:22.5f} "
              f"{change:>26s} {barrier:>36s}", flush=True)


def transformers_cases():
    """BERT-tiny's shape (when transformers is installed) and the zoo ViT, at initialization."""
    cases = []
    try:
        import transformers
        cfg = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=512)
        pair = [transformers.BertModel(cfg).eval() for _ in range(2)]
        for s, m in enumerate(pair):
            torch.manual_seed(s)
            m.init_weights()
        cases.append(("BERT-tiny shape (init)", pair, torch.randint(0, 30522, (2, 16))))
    except ImportError:
        print("transformers is not installed: BERT-tiny left out")
    pair = [mf.models.build("vit", width=128, depth=4, heads=4, seed=s).eval() for s in (0, 1)]
    cases.append(("ViT 128x4 (init)", pair, torch.rand(2, 1, 28, 28)))
    return cases


if __name__ == "__main__":
    main()
