"""Checkpoints read and written one tensor at a time, so that models larger than memory can be aligned.

`LazyState` is a read-only mapping over one `.safetensors` file or a sharded Hugging Face folder
(`model.safetensors.index.json`): names, shapes and dtypes come from the headers; a tensor is read
when asked for and nothing is held (each read opens the file and lets go of its memory map, so the
pages it touched leave the process). `write_streamed` writes a `.safetensors` file tensor by tensor
(safetensors' own `save_file` takes the whole dict at once): header first, then each tensor's bytes,
under a temporary name that becomes the file only once complete.
"""
from __future__ import annotations

import math
import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open

from .atomic import atomic_path
from ..errors import CheckpointError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32"),
                     ("U64", "uint64")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
NAMES = {v: k for k, v in DTYPES.items()}


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the file itself, or a folder's shards."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid shard index ({e}); re-save the model") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: shard {missing[0]} named in {index.name} is missing; download or "
                                  f"copy the whole folder again")
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise CheckpointError(f"{path} holds no .safetensors weights" +
                              (f" (only {', '.join(other[:3])}: pickled weights are never read; convert them "
                               f"with `save_pretrained(..., safe_serialization=True)` where you trust them)"
                               if other else ""))
    return files


class LazyState(Mapping[str, torch.Tensor]):
    """The tensors of a checkpoint, read on access; `shapes` and `dtypes` without reading any."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file_of: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.metadata: dict[Path, dict[str, str]] = {}
        for f in weight_files(self.path):
            try:
                with safe_open(str(f), framework="pt", device="cpu") as h:
                    self.metadata[f] = h.metadata() or {}
                    for k in h.keys():
                        sl = h.get_slice(k)
                        self.file_of[k] = f
                        self.shapes[k] = tuple(sl.get_shape())
                        if sl.get_dtype() not in DTYPES:
                            raise ValueError(f"tensor {k!r} has dtype {sl.get_dtype()}, which torch cannot hold")
                        self.dtypes[k] = DTYPES[sl.get_dtype()]
            except (SafetensorError, OSError, ValueError) as e:
                raise _unreadable(f, e) from None

    def __getitem__(self, key: str) -> torch.Tensor:
        f = self.file_of[key]  # KeyError for names the checkpoint lacks, as a mapping should
        try:
            with safe_open(str(f), framework="pt", device="cpu") as h:
                return h.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _unreadable(f, e, key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.file_of)

    def __len__(self) -> int:
        return len(self.file_of)

    def nbytes(self) -> int:
        return sum(math.prod(s) * self.dtypes[k].itemsize for k, s in self.shapes.items())

    def meta_tensors(self) -> dict[str, torch.Tensor]:
        """Shape-only stand-ins (meta device) for checks that read shapes."""
        return {k: torch.empty(s, dtype=self.dtypes[k], device="meta") for k, s in self.shapes.items()}


def _unreadable(f: Path, e: Exception, key: str | None = None) -> CheckpointError:
    what = f"tensor {key!r} of {f}" if key else str(f)
    return CheckpointError(f"cannot read {what}: {e} (truncated or corrupt file?); download or copy it again")


def write_streamed(path: str | os.PathLike, keys: list[str], shapes: Mapping[str, tuple[int, ...]],
                   dtypes: Mapping[str, torch.dtype], tensor: Callable[[str], torch.Tensor],
                   metadata: Mapping[str, str] | None = None) -> None:
    """Write a `.safetensors` file holding `keys`, asking `tensor(key)` for one tensor at a time."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for k in keys:
        size = math.prod(shapes[k]) * dtypes[k].itemsize
        header[k] = {"dtype": NAMES[dtypes[k]], "shape": list(shapes[k]), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for k in keys:
            t = tensor(k)
            if tuple(t.shape) != tuple(shapes[k]) or t.dtype != dtypes[k]:
                raise ValueError(f"tensor {k!r} came back as {tuple(t.shape)} {t.dtype}, expected "
                                 f"{tuple(shapes[k])} {dtypes[k]}")
            out.write(t.detach().contiguous().view(-1).view(torch.uint8).numpy())  # no extra copy
        out.flush()


