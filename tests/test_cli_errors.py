"""A careless user at the command line: every bad argument ends in one line, the right exit status, nothing written.

Each case runs `modefuse.cli.main(argv)` in-process on two tiny 32-32 MLP checkpoints and a tiny
Fashion-MNIST-format dataset (so no case depends on the real data), and checks: the exit status (2 for
usage errors, 1 for failures), one line on stderr starting `modefuse <command>: error:` that contains
the expected words, no traceback, and an empty output folder.
"""
from __future__ import annotations

import copy
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

import modefuse as mf
from modefuse.cli import COMMANDS, main


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths by placeholder name: checkpoints A, B (32-32 MLPs), C (16-16), a curve, odd files, tiny datasets."""
    d = tmp_path_factory.mktemp("cli_errors")
    rng = np.random.default_rng(0)
    fm = d / "fmnist"
    fm.mkdir()
    for split, n, (images, labels) in (("train", 64, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                                       ("test", 32, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        _write_idx(fm / (images + ".gz"), rng.integers(0, 256, (n, 28, 28)))
        _write_idx(fm / (labels + ".gz"), np.arange(n) % 10)
    cifar = d / "cifar"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(cifar / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), b"labels": list(range(8))}, f)
    paths = {"FMNIST": fm, "CIFAR": cifar}
    for tag, widths, seed in (("A", [32, 32], 0), ("B", [32, 32], 1), ("C", [16, 16], 2)):
        paths[tag] = mf.save(mf.models.build("mlp", widths=widths, seed=seed), d / f"{tag}.safetensors",
                             dataset="fashion-mnist")
    a, b = mf.load(paths["A"]), mf.load(paths["B"])
    paths["CURVE"] = mf.Curve(a, b, copy.deepcopy(a)).save(d / "curve.safetensors")
    paths["TXT"] = d / "notes.txt"
    paths["TXT"].write_text("not a checkpoint\n")
    paths["DIR"] = d / "a_directory"
    paths["DIR"].mkdir()
    mf.save(a, paths["DIR"] / "inside.safetensors")
    paths["EMPTY"] = d / "empty_dir"
    paths["EMPTY"].mkdir()
    paths["MISSING"] = d / "missing.safetensors"
    return paths


# (argv, exit status, words the error line contains). Placeholders: see `files`; OUT, PNG, JSON and
# OUTDIR lie in a fresh folder per case that must stay empty.
CASES = [
    # train
    ("train --widths 16,x --out OUT", 2, "--widths must be positive integers separated by commas"),
    ("train --widths 0 --out OUT", 2, "'0' is not a positive integer"),
    ("train --widths -16 --out OUT", 2, "'-16' is not a positive integer"),
    ("train --widths 16,,16 --out OUT", 2, "item 2 is empty"),
    ("train --widths= --out OUT", 2, "item 1 is empty"),
    ("train --widths 1.5 --out OUT", 2, "'1.5' is not a positive integer"),
    ("train --lr -1 --out OUT", 2, "--lr must be a positive number, got -1.0"),
    ("train --lr 0 --out OUT", 2, "--lr must be a positive number"),
    ("train --lr nan --out OUT", 2, "--lr must be a positive number"),
    ("train --lr inf --out OUT", 2, "--lr must be a positive number"),
    ("train --lr 1e-3x --out OUT", 2, "--lr must be a positive number, got '1e-3x'"),
    ("train --epochs -1 --out OUT", 2, "--epochs must be a non-negative integer"),
    ("train --epochs 2.5 --out OUT", 2, "--epochs must be a non-negative integer, got '2.5'"),
    ("train --batch-size 0 --out OUT", 2, "--batch-size must be a positive integer"),
    ("train --seed -3 --out OUT", 2, "--seed must be a non-negative integer"),
    ("train --model mpl --out OUT", 2, "unknown model 'mpl'"),
    ("train --model vgg --widths 16 --out OUT", 2, "--widths applies to --model mlp, not vgg"),
    ("train --width 0.5 --out OUT", 2, "--width applies to --model vgg or resnet, not mlp"),
    ("train --model vgg --width 0 --out OUT", 2, "--width must be a positive number"),
    ("train --model resnet --depth 19 --out OUT", 2, "invalid choice: 19"),
    ("train --model resnet20 --depth 18 --out OUT", 2, "contradicts --model resnet20"),
    ("train --model resnet --norm group --out OUT", 2, "invalid choice: 'group'"),
    ("train --model lstm --hidden 0 --out OUT", 2, "--hidden must be a positive integer"),
    ("train --model mlp --hidden 8 --out OUT", 2, "--hidden applies to --model rnn or lstm"),
    ("train --arg num_layers --out OUT", 2, "--arg must be KEY=VALUE"),
    ("train --arg depth=3 --out OUT", 2, "model 'mlp' takes no argument 'depth'"),
    ("train --optimizer adamw --out OUT", 2, "invalid choice: 'adamw'"),
    ("train --schedule linear --out OUT", 2, "invalid choice: 'linear'"),
    ("train --dataset imagenet --out OUT", 2, "unknown dataset 'imagenet'"),
    ("train --out DIR", 2, "names a directory; name a file"),
    ("train --out OUTDIR/new/", 2, "names a directory; name a file"),
    ("train --out TXT/model.safetensors", 2, "notes.txt is a file, not a directory"),
    ("train --widths 16", 2, "the following arguments are required: --out"),
    ("train --lrr 0.1 --out OUT", 2, "unrecognized arguments: --lrr"),
    ("train --arg widths=[0] --epochs 1 --out OUT", 1, "each of widths must be a positive integer, got 0"),
    ("train --arg widths=\"16,16\" --epochs 1 --out OUT", 1, "widths must be a list of positive integers"),
    ("train --arg in_features=100 --epochs 1 --out OUT", 1, "takes 100 input features, but the data's inputs"),
    ("train --data-dir MISSING --out OUT", 1, "does not exist"),
    ("train --dataset cifar10 --data-dir EMPTY --out OUT", 1, "cifar10 (train) not found"),
    # eval
    ("eval DIR", 1, "is a directory, not a checkpoint file; it holds inside.safetensors"),
    ("eval MISSING", 1, "does not exist"),
    ("eval TXT", 1, "not a readable .safetensors checkpoint"),
    ("eval CURVE", 1, "is a curve"),
    ("eval A --split val", 2, "invalid choice: 'val'"),
    ("eval A --dataset cifar10 --data-dir CIFAR", 1,
     "takes 784 input features, but the data's inputs have shape 3x32x32"),
    ("eval A B", 2, "unrecognized arguments"),
    ("eval", 2, "the following arguments are required: checkpoint"),
    # align
    ("align A B --method magic --out OUT", 2, "invalid choice: 'magic'"),
    ("align A B --out A", 2, "A.safetensors is one of the input checkpoints"),
    ("align A B --seed x --out OUT", 2, "--seed must be a non-negative integer, got 'x'"),
    ("align A MISSING --out OUT", 1, "does not exist"),
    ("align A C --out OUT", 1, "layers.0.weight"),
    ("align A B", 2, "required: --out"),
    # interpolate
    ("interpolate A B --steps 0", 2, "--steps must be an integer >= 2, got 0"),
    ("interpolate A B --steps 1", 2, "--steps must be an integer >= 2"),
    ("interpolate A B --steps many", 2, "--steps must be an integer >= 2, got 'many'"),
    ("interpolate A B --plot OUTDIR/lmc.pdf", 2, "figures are written as PNG"),
    ("interpolate A B --plot DIR", 2, "names a directory"),
    ("interpolate A B --align magic", 2, "invalid choice: 'magic'"),
    ("interpolate A C", 1, "layers.0.weight"),
    ("interpolate A DIR", 1, "is a directory, not a checkpoint file"),
    # fuse
    ("fuse A B --width 10,abc --out OUT", 2, "'abc' is not a positive integer"),
    ("fuse A B --method wasserstein --width 0,10 --out OUT", 2, "'0' is not a positive integer"),
    ("fuse A B --weights 1,x --out OUT", 2, "--weights must be non-negative numbers separated by commas"),
    ("fuse A B --weights 1,-1 --out OUT", 2, "'-1' is not a non-negative number"),
    ("fuse A B --weights 1,1,1 --out OUT", 2, "--weights has 3 value(s) for 2 checkpoint(s)"),
    ("fuse A B --weights 0,0 --out OUT", 2, "--weights must have a positive sum"),
    ("fuse A B --eps -1 --out OUT", 2, "--eps must be a positive number, got -1.0"),
    ("fuse A B --eps 0 --out OUT", 2, "--eps must be a positive number"),
    ("fuse A B --finetune -1 --out OUT", 2, "--finetune must be a non-negative integer"),
    ("fuse A B --method average --width 16,16 --out OUT", 2, "--width needs --method wasserstein, gromov or zipit"),
    ("fuse A B --method barycenter --out OUT", 2, "invalid choice: 'barycenter'"),
    ("fuse A B --out B", 2, "B.safetensors is one of the input checkpoints"),
    ("fuse A B --plot-couplings PNG --out PNG", 2, "name the same file"),
    ("fuse A B --plot-couplings OUTDIR/c.svg --out OUT", 2, "figures are written as PNG"),
    ("fuse --out OUT", 2, "the following arguments are required: checkpoints"),
    ("fuse A MISSING --out OUT", 1, "does not exist"),
    # plane
    ("plane A A", 1, "model 2 equals model 1: the plane through them is degenerate"),
    ("plane A B B", 1, "model 3 lies on the line through model 1 and model 2"),
    ("plane A B --resolution 1", 2, "--resolution must be an integer >= 2"),
    ("plane A B --limit 0", 2, "--limit must be a positive integer"),
    ("plane A B C --align weight", 2, "drop --align"),
    ("plane A B --out A", 2, "is one of the input checkpoints"),
    ("plane A B --plot OUTDIR/plane.jpg", 2, "figures are written as PNG"),
    ("plane A C", 1, "layers.0.weight"),
    # curve
    ("curve A B --points 1 --out OUT", 2, "--points must be an integer >= 2"),
    ("curve A B --lr 0 --out OUT", 2, "--lr must be a positive number"),
    ("curve A B --epochs -2 --out OUT", 2, "--epochs must be a non-negative integer"),
    ("curve A B --kind spline --out OUT", 2, "invalid choice: 'spline'"),
    ("curve A B --align pam --robust --out OUT", 2, "--robust is not available with --align pam"),
    ("curve A B --out B", 2, "is one of the input checkpoints"),
    ("curve A B --plot OUT --out OUT", 2, "figures are written as PNG"),
    ("curve A C --epochs 1 --out OUT", 1, "layers.0.weight"),
    # reproduce
    ("reproduce wb-mpl", 2, "unknown experiment 'wb-mpl'"),
    ("reproduce wb-mlp --quick --tiny", 2, "--tiny: not allowed with argument --quick"),
    ("reproduce wb-mlp --tiny --out TXT", 2, "notes.txt is a file; name a directory"),
    # federate
    ("federate --clients 0", 2, "--clients must be a positive integer"),
    ("federate --rounds 1.5", 2, "--rounds must be a positive integer, got '1.5'"),
    ("federate --method gromov", 2, "invalid choice: 'gromov'"),
    ("federate --split shards", 2, "invalid choice: 'shards'"),
    ("federate --alpha 0", 2, "--alpha must be a positive number"),
    ("federate --model vgg", 2, "invalid choice: 'vgg'"),
    ("federate --client-widths 200,100,50 --method average", 2, "--client-widths needs --method wasserstein"),
    ("federate --client-widths 200,100", 2, "as many layers as --widths"),
    ("federate --classes 2", 2, "--classes is the number of classes per client of --split labels"),
    ("federate --data-dir MISSING", 1, "missing.safetensors"),
    # no such command
    ("trian --out OUT", 2, "invalid choice: 'trian'"),
]


def _argv(case: str, files, out_dir) -> list[str]:
    where = {**{k: str(v) for k, v in files.items()}, "OUT": str(out_dir / "out.safetensors"),
             "PNG": str(out_dir / "figure.png"), "OUTDIR": str(out_dir)}
    argv = []
    for word in case.split():
        key, _, rest = word.partition("/")
        if "=" in word and word.startswith("--"):
            argv.append(word)
        else:
            argv.append(where.get(key, key) + (("/" + rest) if rest else ""))
    return argv


@pytest.mark.parametrize("case, status, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, status, words, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEFUSE_DATA", str(files["FMNIST"]))  # a tiny dataset: fast, and present everywhere
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    argv = _argv(case, files, out_dir)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    command = argv[0] if argv[0] in COMMANDS else None
    prefix = f"modefuse {command}: error: " if command else "modefuse: error: "
    assert code == status, err
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert words in lines[0], err
    assert "Traceback" not in err
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir())
    assert written == []  # neither in the output folder nor in the working directory


def test_the_cases_cover_every_command():
    assert {c[0].split()[0] for c in CASES} >= set(COMMANDS)
    assert len(CASES) >= 40


def test_debug_shows_the_exception(files, monkeypatch):
    monkeypatch.setenv("MODEFUSE_DATA", str(files["FMNIST"]))
    with pytest.raises(mf.ModefuseError, match="degenerate"):
        main(["plane", str(files["A"]), str(files["A"]), "--debug"])


# The library refuses the same values, in the same words, with ModefuseError (InvalidArgumentError,
# also a ValueError) rather than a ZeroDivisionError or IndexError deep inside.
def _tiny():
    g = torch.Generator().manual_seed(0)
    return mf.data.ImageDataset(torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=g),
                                torch.arange(40) % 10, "tiny", "test")


def _mlp(seed=0):
    return mf.models.build("mlp", widths=[8], seed=seed)


LIBRARY_CASES = [
    (lambda: mf.train(_mlp(), _tiny(), lr=-1, progress=False), "lr must be a positive number, got -1"),
    (lambda: mf.train(_mlp(), _tiny(), lr=float("nan"), progress=False), "lr must be a positive number"),
    (lambda: mf.train(_mlp(), _tiny(), epochs=-1, progress=False), "epochs must be a non-negative integer"),
    (lambda: mf.train(_mlp(), _tiny(), batch_size=0, progress=False), "batch_size must be a positive integer"),
    (lambda: mf.train(_mlp(), _tiny(), momentum=1.5, optimizer="sgd", progress=False), "momentum must be"),
    (lambda: mf.train(_mlp(), _tiny(), optimizer="adamw", progress=False), "optimizer must be one of"),
    (lambda: mf.evaluate(_mlp(), _tiny(), limit=0), "limit must be a positive integer"),
    (lambda: mf.evaluate(mf.models.build("mlp", widths=[8], in_features=100), _tiny()), "takes 100 input features"),
    (lambda: mf.interpolate(_mlp(0), _mlp(1), _tiny(), steps=0, progress=False), "steps must be an integer >= 2"),
    (lambda: mf.interpolate(_mlp(0), _mlp(1), _tiny(), steps=1, progress=False), "steps must be an integer >= 2"),
    (lambda: mf.plane(_mlp(0), _mlp(0), _mlp(1), _tiny(), progress=False),
     "model 2 equals model 1: the plane through them is degenerate"),
    (lambda: mf.plane(_mlp(0), _mlp(1), _mlp(1), _tiny(), progress=False), "permuted model 2 lies on the line"),
    (lambda: mf.plane(_mlp(0), _mlp(1), _mlp(2), _tiny(), resolution=1, progress=False),
     "resolution must be an integer >= 2"),
    (lambda: mf.fit_curve(_mlp(0), _mlp(1), _tiny(), lr=0, progress=False), "lr must be a positive number"),
    (lambda: mf.fit_curve(_mlp(0), _mlp(1), _tiny(), kind="spline", progress=False), "unknown curve kind"),
    (lambda: mf.Curve(_mlp(0), _mlp(1), _mlp(2)).evaluate(_tiny(), n=1), "n must be an integer >= 2"),
    (lambda: mf.Curve(_mlp(0), _mlp(1), _mlp(2)).point(1.5), "t must be a number in [0, 1]"),
    (lambda: mf.pam(_mlp(0), _mlp(1), _tiny(), rounds=0, progress=False), "rounds must be a positive integer"),
    (lambda: mf.PGD(eps=-0.1), "eps must be a non-negative number"),
    (lambda: mf.PGD(steps=2.5), "steps must be a non-negative integer"),
    (lambda: mf.models.build("mlp", widths=[16, 0]), "each of widths must be a positive integer, got 0"),
    (lambda: mf.models.build("mlp", widths="16,16"), "widths must be a list of positive integers"),
    (lambda: mf.models.build("vgg", width=0), "width must be a positive number"),
    (lambda: mf.models.build("lstm", hidden=0), "hidden must be a positive integer"),
    (lambda: mf.data.split(_tiny(), 0), "k must be a positive integer"),
    (lambda: mf.data.split(_tiny(), 2, mode="dirichlet", alpha=0), "alpha must be a positive number"),
]


@pytest.mark.parametrize("call, words", LIBRARY_CASES, ids=[w for _, w in LIBRARY_CASES])
def test_library_refuses_bad_values_in_the_same_words(call, words):
    with pytest.raises(mf.ModefuseError) as e:
        call()
    assert isinstance(e.value, ValueError) or words in ("takes 100 input features", "unknown curve kind")
    assert words in str(e.value)


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(mf.CheckpointError, match="is a directory, not a checkpoint file"):
        mf.load(tmp_path)
