import json
import subprocess
import sys

import pytest
import torch

import modefuse as mf
from modefuse.cli import COMMANDS, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "modefuse.cli", *map(str, args)], capture_output=True, text=True)


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_train_then_eval_json(fmnist_train, tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "--model", "mlp", "--widths", "32", "--epochs", "1", "--seed", "3",
                 "--out", str(ckpt), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["accuracy"] > 0.7
    assert main(["eval", str(ckpt), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"])
    meta = mf.read_metadata(ckpt)
    assert meta["seed"] == 3 and meta["dataset"] == "fashion-mnist" and len(meta["history"]) == 1


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    out = run_cli("eval", bad)
    assert out.returncode == 1
    assert out.stderr.startswith("modefuse eval: error:") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    debug = run_cli("eval", bad, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    out = run_cli("train", "--dataset", "mnist", "--data-dir", tmp_path, "--out", tmp_path / "x.safetensors")
    assert out.returncode == 1 and "mnist (train) not found" in out.stderr and str(tmp_path) in out.stderr


def test_align_and_interpolate_commands(fmnist_train, tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"m{seed}.safetensors")
        assert main(["train", "--widths", "64", "--epochs", "1", "--seed", str(seed), "--out", str(paths[-1])]) == 0
    out = tmp_path / "b_to_a.safetensors"
    assert main(["align", str(paths[0]), str(paths[1]), "--method", "activation", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["groups"] == 1 and report["units_moved"] > 32
    assert mf.read_metadata(out)["aligned_to"] == str(paths[0])
    plot = tmp_path / "lmc.png"
    assert main(["interpolate", str(paths[0]), str(paths[1]), "--align", "weight", "--steps", "5",
                 "--plot", str(plot), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res) == {"naive", "aligned (weight)"}
    assert res["aligned (weight)"]["loss_barrier"] < res["naive"]["loss_barrier"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fuse_command_prints_the_table_and_writes_the_model(fmnist_train, tmp_path, capsys):
    paths = []
    for seed in (0, 1, 2):
        paths.append(tmp_path / f"m{seed}.safetensors")
        assert main(["train", "--widths", "48,24", "--epochs", "1", "--seed", str(seed), "--out", str(paths[-1])]) == 0
    capsys.readouterr()
    out, png = tmp_path / "fused.safetensors", tmp_path / "couplings.png"
    assert main(["fuse", *map(str, paths), "--method", "wasserstein", "--width", "32,16", "--out", str(out),
                 "--plot-couplings", str(png), "--json"]) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_accuracy"]
    assert table["fused (wasserstein)"] > table["vanilla averaging"] + 0.1
    fused = mf.load(out)
    assert fused.arch["kwargs"]["widths"] == [32, 16]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["fuse", *map(str, paths), "--method", "otfusion", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vanilla averaging" in text and "fused (otfusion)" in text


def test_curve_and_plane_commands(fmnist_train, tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"m{seed}.safetensors")
        assert main(["train", "--widths", "32", "--epochs", "1", "--seed", str(seed), "--out", str(paths[-1])]) == 0
    out, png = tmp_path / "curve.safetensors", tmp_path / "curve.png"
    assert main(["curve", *map(str, paths), "--align", "weight", "--epochs", "1", "--points", "5",
                 "--out", str(out), "--plot", str(png), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["curve min accuracy"] > 0.5 and png.read_bytes()[:4] == b"\x89PNG"
    assert mf.load_curve(out).kind == "bezier"
    plane_png = tmp_path / "plane.png"
    assert main(["plane", *map(str, paths), "--resolution", "3", "--limit", "500", "--plot", str(plane_png),
                 "--out", str(tmp_path / "plane.json")]) == 0
    assert plane_png.read_bytes()[:4] == b"\x89PNG" and json.loads((tmp_path / "plane.json").read_text())["xs"]


def test_align_and_fuse_write_their_spec_beside_the_checkpoint_and_take_it_back(tmp_path):
    """The spec used is written as NAME.spec.json; --spec takes it (or an edited one) back."""
    a, b = (mf.models.build("mlp", widths=[16, 8], seed=s) for s in (0, 1))
    mf.save(a, tmp_path / "a.safetensors")
    mf.save(b, tmp_path / "b.safetensors")
    r = run_cli("align", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--out", tmp_path / "c.safetensors")
    assert r.returncode == 0, r.stderr
    spec = mf.PermutationSpec.from_json((tmp_path / "c.spec.json").read_text())
    assert spec.sizes == {"layers.0": 16, "layers.1": 8}
    r = run_cli("align", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--out", tmp_path / "d.safetensors",
             "--spec", tmp_path / "c.spec.json")
    assert r.returncode == 0, r.stderr
    ca, da = (mf.load(tmp_path / n).state_dict() for n in ("c.safetensors", "d.safetensors"))
    assert all(torch.equal(ca[k], da[k]) for k in ca)
    # fusion with the spec given gives what fusion with the inferred one gives
    fused = mf.fuse([a, b], method="otfusion", cost="weight")
    given = mf.fuse([a, b], method="otfusion", cost="weight", spec=spec)
    assert all(torch.equal(fused.model.state_dict()[k], v) for k, v in given.model.state_dict().items())
    wide = mf.fuse([a, mf.models.build("mlp", widths=[12, 6], seed=2)], method="wasserstein", cost="weight",
                   spec=spec, widths=[20, 10])
    assert wide.spec.sizes == {"layers.0": 20, "layers.1": 10}
