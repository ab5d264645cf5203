"""The on-disk spec cache: a second process reuses an inferred spec without exporting, and never a stale one."""
import importlib
import json
import os
import sys

import pytest
import torch
from torch import nn

import modefuse as mf
from modefuse.spec import cache as speccache
from modefuse.spec.trace import Trace, trace_of

infer = sys.modules["modefuse.spec.infer"]


class Pinned(nn.Module):
    """fc1's units reach a cumsum: inference pins them and warns."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.cumsum(self.fc1(x), dim=1))))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEFUSE_CACHE_DIR", str(tmp_path))
    infer._CACHE.clear()
    yield tmp_path / "specs"
    infer._CACHE.clear()


def _no_export(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("exported although the spec was cached")
    monkeypatch.setattr(Trace, "_export", staticmethod(refuse))


def test_a_new_process_reuses_the_spec_without_exporting_and_repeats_its_warnings(cache, monkeypatch):
    x = torch.rand(3, 4)
    with pytest.warns(UserWarning, match="stay fixed.*cumsum"):
        first = mf.infer_spec(Pinned(), x)
    assert len(list(cache.glob("*.json"))) == 1
    infer._CACHE.clear()  # as in a new process
    _no_export(monkeypatch)
    with pytest.warns(UserWarning, match="stay fixed.*cumsum"):
        second = mf.infer_spec(Pinned(), x)
    assert second == first and second.unit_nodes == first.unit_nodes and second.sizes == first.sizes
    assert second.groups == {"fc2": (("fc2.weight", 0), ("fc2.bias", 0), ("fc3.weight", 1))}


def test_a_cached_spec_exports_when_the_graph_is_needed(cache, fmnist_train):
    torch.manual_seed(0)
    a, b = (mf.models.build("mlp", widths=[16, 8]) for _ in range(2))
    xs, ys = fmnist_train.images[:64].float() / 255, fmnist_train.targets[:64]
    x = xs[:2]
    mf.infer_spec(a, x)
    infer._CACHE.clear()
    spec = mf.infer_spec(a, x)
    assert not trace_of(spec).programs  # from the disk: nothing exported yet
    data = [(xs, ys)]
    res = mf.align(a, b, method="activation", data=data, spec=spec)  # taps the graph: exports now
    assert trace_of(spec).programs
    with torch.no_grad():
        assert torch.allclose(res.model(data[0][0]), b(data[0][0]), atol=1e-5)
    infer._CACHE.clear()
    mid = mf.repair(a, [a, a], data)  # reads the graph's layers off a spec from the disk
    with torch.no_grad():
        assert torch.allclose(mid(data[0][0]), a(data[0][0]), atol=1e-4)


def test_editing_the_models_code_or_registering_a_rule_starts_afresh(cache, tmp_path, monkeypatch):
    src = tmp_path / "user_model_for_cache.py"
    src.write_text("import torch\nfrom torch import nn\n\nclass M(nn.Module):\n    def __init__(self):\n"
                   "        super().__init__()\n        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)\n\n"
                   "    def forward(self, x):\n        return self.b(torch.relu(self.a(x)))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("user_model_for_cache")
    x = torch.rand(2, 3)
    assert mf.infer_spec(mod.M(), x).groups
    infer._CACHE.clear()
    src.write_text(src.read_text().replace("torch.relu(self.a(x))", "torch.cumsum(self.a(x), dim=1)"))
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    sys.modules.pop("user_model_for_cache")
    mod = importlib.import_module("user_model_for_cache")
    with pytest.warns(UserWarning, match="cumsum"):
        assert mf.infer_spec(mod.M(), x).groups == {}  # the edit is seen: not the cached spec
    assert len(list(cache.glob("*.json"))) == 2


def test_an_unreadable_entry_is_ignored_and_rewritten_and_the_cache_can_be_turned_off(cache, monkeypatch):
    x = torch.rand(2, 4)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    spec = mf.infer_spec(model, x)
    [entry] = cache.glob("*.json")
    entry.write_text('{"spec": "{\\"format\\": \\"modefuse-spec/1\\", \\"gro')  # truncated
    infer._CACHE.clear()
    assert mf.infer_spec(model, x) == spec
    assert json.loads(entry.read_text())["spec"]  # whole again
    monkeypatch.setenv("MODEFUSE_CACHE_DIR", "off")
    assert speccache.cache_dir() is None
    infer._CACHE.clear()
    entry.unlink()
    assert mf.infer_spec(model, x) == spec
    assert not list(cache.glob("*.json"))
    assert speccache.clear() == 0


def test_spec_json_is_checked_when_read():
    with pytest.raises(mf.ModefuseError, match="not a modefuse permutation spec.*format"):
        mf.PermutationSpec.from_json('{"groups": {}}')
    with pytest.raises(mf.ModefuseError, match="not a modefuse permutation spec"):
        mf.PermutationSpec.from_json("[1, 2")
    spec = mf.PermutationSpec({"h": [("a.weight", 0), ("b.weight", 1)]}, {("h", "b.weight", 1): mf.Layout(0, 4)},
                              {"h": 3}, {("b.weight", 1)})
    assert mf.PermutationSpec.from_json(spec.to_json()) == spec
