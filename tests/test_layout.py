"""The code's layout: packages by concern, few modules at the top, old module paths kept for one release.

The layering itself (each package imports only those below it, no import cycle) is import-linter's
contract in pyproject.toml, checked by `make test` (`lint-imports`).
"""
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import modefuse as mf

SRC = Path(mf.__file__).parent


def test_at_most_ten_modules_at_the_top_and_every_package_says_what_it_holds():
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= 10, top
    for pkg in (p for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = importlib.import_module(f"modefuse.{pkg.name}").__doc__
        assert doc and len(doc.split()) >= 5, pkg.name


@pytest.mark.parametrize("old,new,name", [("modefuse.transport", "modefuse.spec.transport", "random_perms"),
                                          ("modefuse.lazystate", "modefuse.storage.lazystate", "LazyState"),
                                          ("modefuse.flower", "modefuse.federated.flower", "Settings"),
                                          ("modefuse.trained", "modefuse.zoo.train_or_load", "trained")])
def test_an_old_module_path_warns_and_still_works(old, new, name):
    code = (f"import warnings; warnings.simplefilter('always')\n"
            f"with warnings.catch_warnings(record=True) as w:\n"
            f"    from {old} import {name}\n"
            f"import {new} as m\n"
            f"assert {name} is m.{name}\n"
            f"print([str(x.message) for x in w if x.category is DeprecationWarning])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{old} moved to {new}" in out.stdout


def test_the_public_functions_are_not_shadowed_by_modules():
    import modefuse.match.align  # noqa: F401
    import modefuse.merge.fuse  # noqa: F401
    assert callable(mf.align) and callable(mf.fuse) and callable(mf.interpolate) and callable(mf.plane)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ImportError):  # not kept: it would replace mf.align on the package
            importlib.import_module("modefuse.align")


def test_renamed_public_names_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match="mf.Path is now mf.PathMetrics"):
        assert mf.Path is mf.PathMetrics
    ms = [mf.models.build("mlp", widths=[6], seed=s) for s in range(2)]
    with pytest.warns(DeprecationWarning, match=r"fuse\(iters=\) is now fuse\(max_sweeps=\)"):
        fus = mf.fuse(ms, method="wasserstein", iters=3)
    assert fus.coupling_changes and len(fus.coupling_changes) <= 3
    with pytest.warns(DeprecationWarning, match="Fusion.history is now Fusion.coupling_changes"):
        assert fus.history == fus.coupling_changes


def test_one_record_for_a_path_whether_line_or_curve():
    p = mf.PathMetrics([0.0, 0.5, 1.0], [1.0, 3.0, 2.0], [0.9, 0.5, 0.8])
    assert p.alphas == p.ts and p.loss_barrier == 1.5 and p.max_loss == 3.0
    assert abs(p.accuracy_barrier - 0.35) < 1e-12 and p.min_accuracy == 0.5
    assert set(p.to_dict()) >= {"ts", "loss", "accuracy", "loss_barrier", "mean_accuracy", "max_loss"}
