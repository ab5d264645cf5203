import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

import modefuse as mf
from modefuse.zoo.data import read_idx


def write_idx(path, array, compress):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + body)


def write_mnist(root, n_train=50, n_test=20, compress=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", imgs, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)
    return imgs, labels


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_round_trip(tmp_path, compress):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", a, compress)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), a)
    b = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    write_idx(tmp_path / "b.idx", b, compress)
    assert np.array_equal(read_idx(tmp_path / "b.idx"), b)


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(mf.ModefuseError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "t.idx", np.zeros((4, 5), np.uint8), False)
    raw = (tmp_path / "t.idx").read_bytes()
    (tmp_path / "t.idx").write_bytes(raw[:-3])
    with pytest.raises(mf.ModefuseError, match="truncated"):
        read_idx(tmp_path / "t.idx")


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_user_directory(tmp_path, compress):
    imgs, labels = write_mnist(tmp_path, compress=compress)
    ds = mf.data.load("mnist", "test", data_dir=tmp_path)
    assert len(ds) == 20
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.from_numpy(imgs[3]).float() / 255)
    assert y.item() == labels[3]
    assert len(mf.data.load("mnist", "train", data_dir=tmp_path)) == 50


def write_cifar(root, n_per_batch=6):
    rng = np.random.default_rng(1)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data}, f, protocol=2)
        out[name] = (data, labels)
    return out


def test_cifar10_python_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    written = write_cifar(root)
    train = mf.data.load("cifar10", "train", data_dir=tmp_path)
    test = mf.data.load("cifar10", "test", data_dir=tmp_path)
    assert len(train) == 30 and len(test) == 6
    x, y = test[2]
    data, labels = written["test_batch"]
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x, torch.from_numpy(data[2].reshape(3, 32, 32)).float() / 255)
    assert y.item() == labels[2]
    x7, _ = train[7]  # second batch, second image
    assert torch.allclose(x7, torch.from_numpy(written["data_batch_2"][0][1].reshape(3, 32, 32)).float() / 255)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_cifar_reader_never_runs_pickled_code(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(mf.ModefuseError, match="refusing"):
        mf.data.load("cifar10", "test", data_dir=tmp_path)
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


def test_missing_dataset_lists_places_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEFUSE_DATA", str(tmp_path / "env"))
    with pytest.raises(mf.DataNotFoundError, match="data_dir .*mine does not exist"):
        mf.data.load("fashion-mnist", "train", data_dir=tmp_path / "mine")  # never falls back silently
    (tmp_path / "mine").mkdir()
    with pytest.raises(mf.DataNotFoundError) as e:
        mf.data.load("mnist", "train", data_dir=tmp_path / "mine")
    msg = str(e.value)
    assert str(tmp_path / "mine") in msg and str(tmp_path / "env") in msg and "IDX" in msg
    with pytest.raises(mf.DataNotFoundError, match="cifar-10-python.tar.gz"):
        mf.data.load("cifar10", "test", data_dir=tmp_path)
    with pytest.raises(mf.ModefuseError, match="unknown dataset"):
        mf.data.load("imagenet")


def test_fashion_mnist_real_files(fmnist_train, fmnist_test):
    assert len(fmnist_train) == 60_000 and len(fmnist_test) == 10_000
    x, y = fmnist_train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert sorted(fmnist_test.targets.unique().tolist()) == list(range(10))
    assert torch.bincount(fmnist_train.targets).tolist() == [6000] * 10


def test_fashion_mnist_from_data_dir_first(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    write_mnist(tmp_path / "fashion-mnist")
    assert len(mf.data.load("fashion-mnist", "test", data_dir=tmp_path)) == 20


def _labels_dataset(n=1000, classes=10):
    g = torch.Generator().manual_seed(0)
    return mf.data.ImageDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8),
                                torch.randint(0, classes, (n,), generator=g))


@pytest.mark.parametrize("mode", ["iid", "dirichlet", "labels"])
def test_client_splits_partition_and_are_deterministic(mode):
    ds = _labels_dataset()
    parts = mf.data.split(ds, 4, mode=mode, alpha=0.3, seed=5)
    again = mf.data.split(ds, 4, mode=mode, alpha=0.3, seed=5)
    assert sum(len(p) for p in parts) == len(ds)
    for p, q in zip(parts, again):
        assert torch.equal(p.targets, q.targets)
    # every example lands in exactly one client: the label multiset is preserved
    assert torch.equal(torch.bincount(torch.cat([p.targets for p in parts]), minlength=10),
                       torch.bincount(ds.targets, minlength=10))
    other = mf.data.split(ds, 4, mode=mode, alpha=0.3, seed=6)
    assert any(not torch.equal(p.targets, q.targets) for p, q in zip(parts, other)) or mode == "labels"


def test_label_split_gives_disjoint_classes():
    parts = mf.data.split(_labels_dataset(), 3, mode="labels", seed=0)
    sets = [set(p.targets.tolist()) for p in parts]
    assert all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1:])
    assert set().union(*sets) == set(range(10))


def test_label_split_with_shared_classes_and_shards_keep_all_classes():
    ds = _labels_dataset(1000)
    parts = mf.data.split(ds, 10, mode="labels", classes=2, seed=0)
    sets = [set(p.targets.tolist()) for p in parts]
    assert all(len(c) == 2 for c in sets) and len({frozenset(c) for c in sets}) == 10  # no two clients alike
    holders = torch.bincount(torch.tensor([c for cs in sets for c in cs]), minlength=10)
    assert holders.tolist() == [2] * 10  # each class held by two clients, its examples shared between them
    assert sum(len(p) for p in parts) == len(ds)
    assert torch.equal(torch.bincount(torch.cat([p.targets for p in parts]), minlength=10),
                       torch.bincount(ds.targets, minlength=10))
    assert all(p.num_classes == 10 for p in parts)  # a client's model still has every class's output
    with pytest.raises(mf.ModefuseError, match="only 10 classes"):
        mf.data.split(ds, 3, mode="labels", classes=11)


def test_dirichlet_small_alpha_is_skewed():
    parts = mf.data.split(_labels_dataset(5000), 5, mode="dirichlet", alpha=0.05, seed=0)
    iid = mf.data.split(_labels_dataset(5000), 5, mode="iid", seed=0)

    def skew(ps):  # mean over clients of the share of the client's most common class
        return np.mean([torch.bincount(p.targets).max().item() / max(len(p), 1) for p in ps if len(p)])
    assert skew(parts) > 2 * skew(iid)


def test_keyword_inputs_are_batched_as_dicts():
    """An encoder-decoder's data: a dict of equal-length tensors, or an iterable of such dicts."""
    from modefuse.zoo.batching import batches, first_inputs
    ids = torch.arange(50).reshape(25, 2)
    data = {"input_ids": ids, "decoder_input_ids": ids + 100}
    got = list(batches(data, batch_size=10, limit=23))
    assert [len(x["input_ids"]) for x, y in got] == [10, 10, 3] and all(y is None for _, y in got)
    assert torch.equal(torch.cat([x["decoder_input_ids"] for x, _ in got]), ids[:23] + 100)
    assert torch.equal(first_inputs([data])["input_ids"], ids[:2])
    with pytest.raises(ValueError, match="different numbers of examples"):
        list(batches({"input_ids": ids, "decoder_input_ids": ids[:3]}))
