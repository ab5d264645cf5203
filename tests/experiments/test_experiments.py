"""Every experiment on the tiny preset: the files it writes and the sanity of their numbers.

The quick presets (about 10 minutes each on 2 cores) are one command each:
`modefuse reproduce NAME --quick`, or all of them with `make reproduce-quick`.
"""
import json

import pytest

import modefuse as mf
from modefuse.cli import main
from modefuse.experiments.base import REGISTRY  # importing the package registers every experiment
from modefuse.experiments.runner import reproduce

NAMES = ["wb-mlp", "wb-hetero", "wb-cnn", "wb-rnn", "lmc-plane", "curves", "lmc-width", "vit-lmc"]


def test_every_paper_experiment_is_registered():
    assert set(NAMES) <= set(REGISTRY)


def _rows_with_numbers(tables):
    for t in tables:
        for row in t["rows"]:
            for header, v in zip(t["header"], row):
                if isinstance(v, float) and ("accuracy" in header or "clean" in header or "robust" in header):
                    yield v


# wb-cnn's tiny preset (nine fusions of two CNN pairs, each REPAIRed and fine-tuned: about a minute) runs with
# `make test-slow`; its fusion methods are each tested on CNNs in the default suite
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "wb-cnn" else n for n in NAMES])
def test_tiny_preset_writes_results_tables_and_figures(name, tmp_path, fmnist_train):
    out = tmp_path / name
    run = reproduce(name, "tiny", out=out, progress=False)
    res = json.loads((out / "results.json").read_text())
    assert res["experiment"] == name and res["preset"] == "tiny" and res["versions"]["modefuse"] == mf.__version__
    assert res["tables"] and (out / "table.md").read_text().startswith(f"# {name}")
    for fig in res["figures"]:
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    values = list(_rows_with_numbers(res["tables"]))
    assert (values or name == "lmc-width") and all(0.0 <= v <= 1.0 for v in values)
    # resumable: finished models are reused, not retrained
    models = sorted((out / "models").glob("*.safetensors"))
    assert models
    stamps = [p.stat().st_mtime_ns for p in models]
    reproduce(name, "tiny", out=out, progress=False)
    assert [p.stat().st_mtime_ns for p in models] == stamps
    if name == "lmc-width":
        barrier = res["results"]["midpoint_barrier"]
        for i in range(len(res["results"]["widths"])):
            assert barrier["weight"][i] < barrier["naive"][i] and barrier["activation"][i] < barrier["naive"][i]
    assert run.sections


def test_reproduce_command(tmp_path, capsys, fmnist_train):
    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(n in listing for n in NAMES)
    assert main(["reproduce", "wb-rnn", "--tiny", "--out", str(tmp_path / "r")]) == 0
    assert "GWB" in capsys.readouterr().out
    assert main(["reproduce", "nope", "--tiny"]) == 2  # a usage error: argparse's status
    assert "unknown experiment 'nope'" in capsys.readouterr().err
