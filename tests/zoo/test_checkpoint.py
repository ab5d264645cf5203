import json
import os

import pytest
import torch
from safetensors.torch import save_file

import modefuse as mf
from modefuse.zoo.checkpoint import load_state, save_state
from zoo_instances import build


@pytest.fixture
def saved(tmp_path):
    model = build("mlp")
    return model, mf.save(model, tmp_path / "a.safetensors", dataset="fashion-mnist", seed=7,
                          metrics={"accuracy": 0.5})


def test_metadata_is_json_with_architecture(saved):
    model, path = saved
    meta = mf.read_metadata(path)
    assert meta["arch"] == {"name": "mlp", "kwargs": model.arch["kwargs"]}
    assert meta["seed"] == 7 and meta["metrics"] == {"accuracy": 0.5}
    assert meta["modefuse_version"] == mf.__version__
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp.safetensors")]


def test_truncated_checkpoint_is_a_clear_error(saved):
    _, path = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(mf.CheckpointError, match="truncated or corrupt"):
        mf.load(path)


def test_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(mf.CheckpointError, match="not a readable"):
        mf.load(junk)
    pickled = tmp_path / "model.pt"
    torch.save(build("mlp").state_dict(), pickled)  # a pickle: must never be unpickled
    with pytest.raises(mf.CheckpointError):
        mf.load(pickled)
    with pytest.raises(mf.CheckpointError, match="does not exist"):
        mf.load(tmp_path / "missing.safetensors")


def test_plain_safetensors_loads_into_a_given_module(tmp_path):
    model = build("mlp", seed=1)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    with pytest.raises(mf.CheckpointError, match="not a modefuse checkpoint.*model=module"):
        mf.load(plain)
    into = mf.load(plain, model=build("mlp", seed=2))
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(into(x), model(x))


def test_wrong_architecture_names_first_differing_tensor(saved):
    _, path = saved
    other = mf.models.build("mlp", widths=[32, 17, 8])
    with pytest.raises(mf.CheckpointError, match=r"layers\.1\.weight.*\(17, 32\).*\(16, 32\)"):
        mf.load(path, model=other)


def test_nan_weights_are_refused(tmp_path):
    model = build("mlp")
    with torch.no_grad():
        model.layers[1].weight[0, 0] = float("nan")
    with pytest.raises(mf.CheckpointError, match=r"layers\.1\.weight.*NaN"):
        mf.save(model, tmp_path / "nan.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "nan.safetensors"),
              metadata={"modefuse": json.dumps({"arch": model.arch})})
    with pytest.raises(mf.CheckpointError, match=r"layers\.1\.weight.*NaN"):
        mf.load(tmp_path / "nan.safetensors")
    assert mf.load(tmp_path / "nan.safetensors", check_nonfinite=False) is not None


def test_atomic_write_keeps_old_file_on_failure(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()
    import modefuse.zoo.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        mf.save(build("mlp", seed=3), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.safetensors"]


def test_training_state_round_trip(tmp_path):
    model = build("mlp")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    opt.step()
    save_state(tmp_path / "s", model, opt, epoch=3, history=[{"a": 1}])
    model2 = build("mlp", seed=9)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    info = load_state(tmp_path / "s", model2, opt2)
    assert info["epoch"] == 3 and info["history"] == [{"a": 1}]
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
