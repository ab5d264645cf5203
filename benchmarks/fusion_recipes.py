"""Which training recipes and fusion variants close the one-shot fusion gap (issue 11's goals): an exploration.

Run once on an H200 (results: benchmarks/results/fusion_recipes-h200.jsonl; GPU training is not bit-reproducible,
and each row is one set of seeds); on a CPU it takes hours. Command used:
    MODEFUSE_DATA=<folder with the Fashion-MNIST files> OUT=<dir> python benchmarks/fusion_recipes.py

(A) 2 x VGG11 (width 0.25, no BN), Fashion-MNIST, n_train 20000, n_test 2000.
(B) 4 x MLP 784-400-200-100-10, full 60k train, test 2000 (same as wb-mlp quick? it uses the full test set:
    here n_test is an argument).
Writes one JSON line per result to $OUT/results.jsonl (flushed), a summary at the end.
Usage: python benchmarks/fusion_recipes.py [--tiny] [--only A|B] [--budget SECONDS] [--jobs name,name]
"""
from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import torch

import modefuse as mf

p = argparse.ArgumentParser()
p.add_argument("--tiny", action="store_true")
p.add_argument("--budget", type=float, default=1e9)
p.add_argument("--jobs", default="")
p.add_argument("--data", default=os.environ.get("MODEFUSE_DATA", ".devdata/fashion-mnist"))
args = p.parse_args()
T0 = time.time()
DEV = "cuda" if torch.cuda.is_available() else "cpu"
OUT = os.environ.get("OUT", "/tmp/exp11_out")
os.makedirs(OUT, exist_ok=True)
RES = open(os.path.join(OUT, "results.jsonl"), "a")
torch.backends.cudnn.benchmark = False


def elapsed():
    return time.time() - T0


def log(**rec):
    rec["t"] = round(elapsed(), 1)
    line = json.dumps(rec)
    print(line, flush=True)
    RES.write(line + "\n")
    RES.flush()


class OutOfTime(Exception):
    pass


def check_time():
    if elapsed() > args.budget:
        raise OutOfTime()


full_train = mf.data.load("fashion-mnist", "train", args.data)
full_test = mf.data.load("fashion-mnist", "test", args.data)
TINY = args.tiny
if TINY:
    VGG_W, MLP_WIDTHS = 0.0625, [32, 16, 8]
    A_TRAIN, A_TEST, B_TRAIN, B_TEST = 1024, 256, 2048, 256
else:
    VGG_W, MLP_WIDTHS = 0.25, [400, 200, 100]
    A_TRAIN, A_TEST, B_TRAIN, B_TEST = 20000, 2000, 60000, 10000
a_train, a_test = full_train.subset(range(A_TRAIN)), full_test.subset(range(A_TEST))
b_train, b_test = full_train.subset(range(B_TRAIN)), full_test.subset(range(B_TEST))


def on_dev(ds, device):
    """The dataset as an (x, y) pair of tensors on `device` (repair/fuse trace with the data's first batch,
    which must be on the model's device: mf.repair traces with CPU inputs otherwise)."""
    x, y = next(iter(mf.zoo.batching.batches(ds, batch_size=len(ds))))
    return x.to(device), y.to(device)


def run_variants(models, train, test, mean, tag, extra):
    try:
        variants(models, on_dev(train, DEV), on_dev(test, DEV), mean, tag, extra)
    except OutOfTime:
        raise
    except Exception as e:
        if DEV == "cpu":
            raise
        log(part=tag, error_on_gpu=repr(e)[:300])
        traceback.print_exc()
        variants([m.cpu() for m in models], on_dev(train, "cpu"), on_dev(test, "cpu"), mean, tag + " (cpu)", extra)


def acc(m, test):
    return round(100 * mf.evaluate(m, test)["accuracy"], 2)


def train_models(arch, kw, train, k, epochs, lr, opt, wd=0.0):
    out = []
    for s in range(k):
        m = mf.models.build_for(arch, train, seed=s, **kw).to(DEV)
        mf.train(m, train, epochs=epochs, lr=lr, optimizer=opt, seed=s, weight_decay=wd, progress=False)
        out.append(m.eval())
    return out


def average(models):
    return mf.fuse(models, method="average").model


def align_all(ref, models, train):
    return [mf.align(ref, m, method="activation", data=train).model for m in models]


def variants(models, train, test, mean, tag, extra):
    """Each variant: (label, fn) -> (one-shot model, repaired model or None)."""
    k = len(models)

    def fuse_v(label, **kw):
        t = time.time()
        f = mf.fuse(models, data=train, **kw)
        a0 = acc(f.model, test)
        r = mf.repair(f.model, models, train, couplings=f.couplings or None)
        a1 = acc(r, test)
        log(part=tag, variant=label, fused=a0, repair=a1, gap=round(mean - a0, 2), gap_repair=round(mean - a1, 2),
            sec=round(time.time() - t, 1))
        check_time()
        return f, r

    fuse_v("average", method="average")
    _, otf_r = fuse_v("otfusion act", method="otfusion", cost="activation")
    _, wb_r = fuse_v("wasserstein act", method="wasserstein", cost="activation")
    if "limit2000" in extra:
        fuse_v("wasserstein act limit=2000", method="wasserstein", cost="activation", limit=2000)
    if "weight" in extra:
        fuse_v("wasserstein weight in+out", method="wasserstein", cost="weight")

    # align to model 0 by activation correlation (5000 examples), average, REPAIR (REPAIR paper's recipe)
    t = time.time()
    aligned = [models[0]] + align_all(models[0], models[1:], train)
    avg = average(aligned)
    a0 = acc(avg, test)
    rep = mf.repair(avg, aligned, train)
    a1 = acc(rep, test)
    log(part=tag, variant="align(act corr)->avg", fused=a0, repair=a1, gap=round(mean - a0, 2),
        gap_repair=round(mean - a1, 2), sec=round(time.time() - t, 1))
    check_time()

    # iterate: align every model to the current (repaired) merged model, average, REPAIR
    for start_label, start in (("align-avg+R", rep), ("wb act+R", wb_r)):
        t = time.time()
        cur = start
        for it in range(1, 4):
            aligned_i = align_all(cur, models, train)
            avg = average(aligned_i)
            a0 = acc(avg, test)
            cur = mf.repair(avg, aligned_i, train)
            a1 = acc(cur, test)
            log(part=tag, variant=f"realign-to-merged from {start_label} it{it}", fused=a0, repair=a1,
                gap=round(mean - a0, 2), gap_repair=round(mean - a1, 2), sec=round(time.time() - t, 1))
            check_time()
        if "one_start" in extra:
            break

    if k > 2 and "mergemany" in extra:
        # MergeMany with activations: each model aligned to the REPAIRed average of the others, 3 rounds
        t = time.time()
        cur = list(aligned)
        for rnd in range(1, 4):
            for i in range(k):
                others = [cur[j] for j in range(k) if j != i]
                ref = mf.repair(average(others), others, train)
                cur[i] = mf.align(ref, models[i], method="activation", data=train).model
            avg = average(cur)
            a0 = acc(avg, test)
            a1 = acc(mf.repair(avg, cur, train), test)
            log(part=tag, variant=f"mergemany-act round{rnd}", fused=a0, repair=a1, gap=round(mean - a0, 2),
                gap_repair=round(mean - a1, 2), sec=round(time.time() - t, 1))
            check_time()

    if "wide" in extra:
        wide = [2 * w for w in MLP_WIDTHS]
        fuse_v(f"[WIDER TARGET {wide}] wasserstein act", method="wasserstein", cost="activation", widths=wide)


def _job(part, arch, kw, train, test, k, epochs, lr, opt, wd, extra):
    """Train k models by one recipe, log their accuracies, then every fusion variant."""
    t = time.time()
    models = train_models(arch, kw, train, k, epochs, lr, opt, wd)
    accs = [acc(m, test) for m in models]
    mean = round(sum(accs) / len(accs), 2)
    log(part=part, variant="inputs", inputs=accs, mean=mean,
        recipe=dict(epochs=epochs, lr=lr, opt=opt, wd=wd, n_train=len(train)), sec=round(time.time() - t, 1))
    check_time()
    run_variants(models, train, test, mean, part, extra)


def job_A(name, epochs, lr, opt, wd=0.0, extra=(), train=None):
    a_train = train if train is not None else globals()["a_train"]
    _job(f"A:{name}", "vgg", {"width": VGG_W}, a_train, a_test, 2, epochs, lr, opt, wd, extra)


def job_B(name, epochs, lr, opt, wd=0.0, extra=()):
    _job(f"B:{name}", "mlp", {"widths": MLP_WIDTHS}, b_train, b_test, 4, epochs, lr, opt, wd, extra)


JOBS = {
    "A0": lambda: job_A("adam1e-3 4ep (baseline)", 4, 1e-3, "adam", extra=("limit2000", "one_start")),
    "B0": lambda: job_B("adam1e-3 2ep (baseline)", 2, 1e-3, "adam", extra=("mergemany", "wide", "one_start")),
    "A1": lambda: job_A("adam1e-3 8ep", 8, 1e-3, "adam", extra=("one_start",)),
    "A3": lambda: job_A("sgd0.05 m0.9 8ep", 8, 0.05, "sgd", extra=("one_start",)),
    "B1": lambda: job_B("adam1e-3 6ep", 6, 1e-3, "adam", extra=("mergemany", "one_start")),
    "B3": lambda: job_B("sgd0.05 m0.9 6ep", 6, 0.05, "sgd", extra=("one_start",)),
    "A2": lambda: job_A("adam5e-4 8ep", 8, 5e-4, "adam", extra=("one_start",)),
    "A4": lambda: job_A("adam2e-3 6ep", 6, 2e-3, "adam", extra=("one_start",)),
    "B2": lambda: job_B("adam5e-4 6ep", 6, 5e-4, "adam", extra=("one_start",)),
    "A5": lambda: job_A("[60k TRAIN] adam1e-3 8ep", 8, 1e-3, "adam", extra=("one_start",), train=b_train),
    "A6": lambda: job_A("sgd0.02 m0.9 8ep", 8, 0.02, "sgd", extra=("one_start",)),
}
names = args.jobs.split(",") if args.jobs else ["A0", "A4", "B0", "B1", "A5", "A1", "B3", "B2", "A2"]
log(part="meta", device=torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", jobs=names, tiny=TINY)
for n in names:
    if elapsed() > args.budget:
        log(part="meta", skipped=n)
        continue
    try:
        JOBS[n]()
    except OutOfTime:
        log(part="meta", out_of_time_in=n)
    except Exception as e:  # keep going: one recipe diverging must not lose the others
        log(part="meta", error_in=n, error=repr(e)[:300])
        traceback.print_exc()
log(part="meta", done=True)
