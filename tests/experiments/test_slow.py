"""End-to-end runs of the quick presets, checking the papers' claims (`make test-slow`, a few minutes)."""
import pytest

from modefuse.experiments import reproduce

pytestmark = pytest.mark.slow


def test_wb_mlp_quick_fusion_far_above_averaging(tmp_path, fmnist_train):
    res = reproduce("wb-mlp", "quick", out=tmp_path, progress=False).results["fusion"]
    for k in (2, 4, 6):
        for cost in ("weight cost (paper)", "in+out weights", "activation cost"):
            assert res[f"K={k} wasserstein, {cost}"]["before"] > res[f"K={k} average"]["before"] + 0.1, (k, cost)
            assert res[f"K={k} wasserstein, {cost}"]["after"] > res[f"K={k} average"]["after"], (k, cost)


def test_lmc_width_quick_aligned_barrier_shrinks_with_width(tmp_path, fmnist_train):
    res = reproduce("lmc-width", "quick", out=tmp_path, progress=False).results
    for method in ("weight", "weight_cov", "activation"):
        b = res["midpoint_barrier"][method]
        assert b[-1] < b[0] / 4 and b[-1] < 0.1, (method, b)
        assert all(m < n for m, n in zip(b, res["midpoint_barrier"]["naive"]))
    assert res["participation_ratio"] == sorted(res["participation_ratio"])
