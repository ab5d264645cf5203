"""Datasets: Fashion-MNIST, MNIST and CIFAR-10 read from local files, and client splits.

Every dataset is held in memory as uint8 images and int64 labels, and yields
`(x, y)` with `x` a float tensor `(C, H, W)` in [0, 1]. Keeping uint8 and
converting per batch (see `modefuse.batching`) keeps Fashion-MNIST at 47 MB.
"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checks import positive_float, positive_int
from ..errors import DataNotFoundError, ModefuseError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("fashion-mnist", "mnist", "cifar10")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class ImageDataset(Dataset):
    """Images `(N, C, H, W)` as uint8 and labels `(N,)` as int64, served as floats in [0, 1]."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, name: str = "", split: str = "",
                 num_classes: int | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = targets.long()
        self.name = name
        self.split = split
        self._classes = num_classes  # a subset keeps its parent's classes (a client may miss some)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float().div_(255), self.targets[i]

    @property
    def num_classes(self) -> int:
        if self._classes is not None:
            return self._classes
        return int(self.targets.max()) + 1 if len(self.targets) else 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> "ImageDataset":
        """The examples at `indices`, as a dataset of the same kind."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageDataset(self.images[idx], self.targets[idx], self.name, self.split, self.num_classes)

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, shape={self.input_shape})"


# ---------------------------------------------------------------- file formats

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ModefuseError(f"{path} is not an IDX file (bad magic number); expected MNIST-format files")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ModefuseError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ModefuseError(f"{path} is truncated or corrupt: {len(body)} bytes of data, header says {expected}")
    return np.frombuffer(body, dtype).reshape(shape)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: the CIFAR-10 batches, nothing executable."""

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at pickle protocol 2
            import codecs
            return codecs.encode
        raise ModefuseError(f"refusing to load {module}.{name} from a CIFAR-10 batch: not a plain array file")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: images (N, 3, 32, 32) uint8 and labels (N,)."""
    try:
        with open(path, "rb") as f:
            d = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as e:
        raise ModefuseError(f"{path} is not a readable CIFAR-10 python batch ({e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ModefuseError(f"{path} is not a CIFAR-10 python batch (no b'data'/b'labels' entries)")
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(d[b"labels"], dtype=np.int64)


# ---------------------------------------------------------------- locating files

def _candidates(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    places = []
    for base in (data_dir, os.environ.get("MODEFUSE_DATA")):
        if base:
            places += [Path(base), Path(base) / name]
    if name == "fashion-mnist":
        places.append(DEBIAN_FASHION_MNIST)
    if name == "cifar10":
        places = [q for p in places for q in (p, p / "cifar-10-batches-py")]
    return places


def _find(names: list[str], places: list[Path], allow_gz: bool) -> list[Path] | None:
    for place in places:
        found = []
        for n in names:
            hit = next((place / (n + ext) for ext in (("", ".gz") if allow_gz else ("",))
                        if (place / (n + ext)).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


_HOW_TO_GET = {
    "fashion-mnist": "install the Debian package (`sudo apt-get install dataset-fashion-mnist`) or put the "
                     "four IDX files (train-images-idx3-ubyte.gz, ...) in a directory and pass data_dir= "
                     "or set MODEFUSE_DATA",
    "mnist": "download the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) into a directory and "
             "pass it as data_dir= (or --data-dir), or set MODEFUSE_DATA",
    "cifar10": "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it "
               "and pass the directory holding cifar-10-batches-py as data_dir= (or --data-dir)",
}


def load(name: str, split: str = "train", data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Load `name` ("fashion-mnist", "mnist", "cifar10") `split` ("train" or "test") from local files."""
    name = name.lower().replace("_", "-")
    name = {"fmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(name, name)
    if name not in NAMES:
        raise ModefuseError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    if split not in ("train", "test"):
        raise ModefuseError(f"unknown split {split!r}; use 'train' or 'test'")
    if data_dir is not None and not Path(data_dir).is_dir():
        what = "is not a directory" if Path(data_dir).exists() else "does not exist"
        raise DataNotFoundError(f"data_dir {data_dir} {what}; pass the directory holding the {name} files. "
                                f"To get them: {_HOW_TO_GET[name]}")
    places = _candidates(name, data_dir)
    wanted = list(_IDX_FILES[split]) if name != "cifar10" else _CIFAR_FILES[split]
    files = _find(wanted, places, allow_gz=name != "cifar10")
    if files is None:
        searched = ", ".join(str(p) for p in places) or "(no directory given and MODEFUSE_DATA unset)"
        raise DataNotFoundError(f"{name} ({split}) not found; looked for {wanted[0]}... in: {searched}. "
                                f"To get it: {_HOW_TO_GET[name]}")
    if name == "cifar10":
        parts = [read_cifar_batch(f) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    else:
        images, labels = read_idx(files[0]), read_idx(files[1])
        if images.ndim != 3:
            raise ModefuseError(f"{files[0]}: expected images of shape (N, H, W), got {images.shape}")
        images = images[:, None]
    if len(images) != len(labels):
        raise ModefuseError(f"{name} ({split}): {len(images)} images but {len(labels)} labels in {files}")
    return ImageDataset(torch.from_numpy(np.array(images, dtype=np.uint8)),  # a writable copy
                        torch.from_numpy(np.array(labels, dtype=np.int64)), name, split)


# ---------------------------------------------------------------- client splits

def split(dataset: ImageDataset, k: int, mode: str = "iid", alpha: float = 0.5,
          seed: int = 0, classes: int | None = None) -> list[ImageDataset]:
    """Split `dataset` among `k` clients, deterministically for a given seed.

    mode: "iid" (uniform shuffle), "dirichlet" (each class spread over clients in
    proportions drawn from Dirichlet(alpha): small alpha, more skew) or "labels"
    (label skew: the classes are shuffled and dealt out; by default disjoint sets,
    with `classes=c` each client holds c classes, client i the i-th to (i+c-1)-th of
    the shuffled cycle, and a class's examples are shared among the c clients
    holding it: McMahan et al.'s pathological non-IID split for c = 2).
    """
    k = positive_int(k, "k")
    if mode == "dirichlet":
        alpha = positive_float(alpha, "alpha")
    rng = np.random.default_rng(seed)
    labels = dataset.targets.numpy()
    n = len(labels)
    if mode == "iid":
        parts = np.array_split(rng.permutation(n), k)
    elif mode == "dirichlet":
        parts = [[] for _ in range(k)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * k))[:-1] * len(idx)).astype(int)
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].extend(chunk.tolist())
        parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    elif mode == "labels":
        order = rng.permutation(np.unique(labels))
        if classes is None:  # disjoint label sets
            if k > len(order):
                raise ModefuseError(f"cannot give {k} clients disjoint label sets: only {len(order)} classes; "
                                    f"pass classes= (classes per client) to let clients share classes")
            parts = [np.flatnonzero(np.isin(labels, group)) for group in np.array_split(order, k)]
        else:
            c = positive_int(classes, "classes")
            if c > len(order):
                raise ModefuseError(f"classes={c} per client but the data has only {len(order)} classes")
            holders: dict[int, list[int]] = {}
            for i in range(k):
                for j in range(c):
                    holders.setdefault(int(order[(i + j) % len(order)]), []).append(i)
            parts = [[] for _ in range(k)]
            for cls, who in holders.items():
                idx = rng.permutation(np.flatnonzero(labels == cls))
                for i, chunk in zip(who, np.array_split(idx, len(who))):
                    parts[i].extend(chunk.tolist())
            parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    else:
        raise ModefuseError(f"unknown split mode {mode!r}; use 'iid', 'dirichlet' or 'labels'")
    return [dataset.subset(p) for p in parts]
