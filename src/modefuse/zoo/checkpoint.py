"""Checkpoints: one `.safetensors` file, weights plus JSON metadata; nothing is ever unpickled.

The metadata (key "modefuse") holds the architecture name and arguments of
zoo models, so `load` rebuilds the module, and whatever the caller adds
(dataset, seed, metrics). Training state for resuming (optimizer buffers,
epoch) is stored the same way by `save_state` / `load_state`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..version import __version__
from . import models
from ..storage.atomic import atomic_path
from ..errors import ArchitectureMismatchError, CheckpointError
from ..storage.statedict import check_finite, check_same_architecture

_KEY = "modefuse"


def state_tensors(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """`model`'s state as CPU tensors to write, names prefixed with `prefix`."""
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def write_tensors(path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """`tensors` and the JSON metadata `meta` into one .safetensors file, atomically: every file modefuse
    writes (models, training states, curves) goes through here."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_KEY: json.dumps(meta, default=str)})


def save(model: nn.Module, path: str | os.PathLike, **metadata) -> Path:
    """Write `model` to `path` (atomically), with its architecture and `metadata` as JSON.

    One .safetensors file: nothing is pickled, so loading it runs no code. A zoo model's architecture
    (name and arguments) is stored, so `load(path)` rebuilds it; other modules load into a module the
    caller builds (`load(path, model=...)`).

    Parameters
    ----------
    model : nn.Module
        The model to write; refused if any tensor is not finite.
    path : str or PathLike
        The file, written under a temporary name and then renamed (complete or not at all).
    **metadata
        Stored as JSON beside the weights (dataset, seed, metrics, ...); values JSON cannot hold are
        stored as their str.

    Returns
    -------
    Path
        `path`.
    """
    check_finite(model.state_dict(), f"refusing to save {path}")
    meta = {"format": "modefuse-model", "modefuse_version": __version__,
            "arch": getattr(model, "arch", None), **metadata}
    write_tensors(path, state_tensors(model), meta)
    return Path(path)


def read_tensors(path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors and modefuse metadata of a .safetensors file (metadata None for a foreign file)."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors"))
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file" +
                              (f"; it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}"
                               if inside else ""))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable .safetensors checkpoint (truncated or corrupt?): "
                              f"{e}. Re-create it, e.g. with `modefuse train ... --out {path}`") from None
    if _KEY not in raw_meta:
        return tensors, None
    try:
        meta = json.loads(raw_meta[_KEY])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: the modefuse metadata is not valid JSON; the file is damaged") from None
    return tensors, meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (architecture, dataset, seed, metrics, ...)."""
    meta = read_tensors(path)[1]
    if meta is None:
        raise CheckpointError(_foreign(path))
    return meta


def _foreign(path) -> str:
    return (f"{path} is a .safetensors file but not a modefuse checkpoint (no '{_KEY}' metadata); "
            f"load its tensors into your module with mf.load(path, model=module)")


def load(path: str | os.PathLike, model: nn.Module | None = None, check_nonfinite: bool = True) -> nn.Module:
    """Rebuild the module stored at `path` (or fill `model` with its weights), its metadata attached.

    Reads what `save` writes, the model part of a training-state file, and any other .safetensors file
    whose tensor names and shapes fit `model`; nothing is ever unpickled. A curve file (three models)
    is refused without `model`: read it with `mf.load_curve`.

    Parameters
    ----------
    path : str or PathLike
        A .safetensors file.
    model : nn.Module, optional
        A module to fill (needed when the file holds no zoo architecture); it must have the same tensor
        names and shapes, and takes the stored values in its own dtypes.
    check_nonfinite : bool
        Refuse a checkpoint holding NaN or infinite values.

    Returns
    -------
    nn.Module
        The rebuilt zoo model, or `model` filled; its `checkpoint_metadata` attribute holds the stored
        metadata (empty for a file modefuse did not write).

    Raises
    ------
    CheckpointError
        The file is missing, unreadable or damaged, holds no architecture and no `model` was given, or
        does not fit `model`.
    """
    tensors, meta = read_tensors(path)
    meta = meta or {}
    if meta.get("format") == "modefuse-curve" and model is None:
        raise CheckpointError(f"{path} is a curve (three models, written by `modefuse curve`), not one model; "
                              f"read it with mf.load_curve(path), or use a point on it: curve.point(t)")
    if meta.get("format") == "modefuse-train-state":
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if check_nonfinite:
        check_finite(tensors, f"checkpoint {path}")
    if model is None:
        arch = meta.get("arch")
        if not arch:
            raise CheckpointError(_foreign(path) if not meta else
                                  f"{path} holds no architecture (the model was not from the zoo); "
                                  f"pass the module to fill: mf.load(path, model=module)")
        model = models.build(arch["name"], **arch["kwargs"])
    _fill(model, tensors, path)
    model.checkpoint_metadata = meta
    return model


def _fill(model: nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    expected = model.state_dict()
    try:
        check_same_architecture(expected, tensors, "the model", f"checkpoint {path}")
    except ArchitectureMismatchError as e:
        raise CheckpointError(str(e)) from None
    model.load_state_dict({k: tensors[k].to(expected[k].dtype) for k in expected}, strict=True)


# ---------------------------------------------------------------- training state (resume)

def save_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
               **info) -> None:
    """Write model weights, optimizer buffers and `info` (epoch, history, config) for resuming."""
    tensors = state_tensors(model, "model.")
    sd = optimizer.state_dict()
    plain = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().to("cpu").contiguous().clone()
            else:
                plain[f"{pid}.{k}"] = v
    meta = {"format": "modefuse-train-state", "modefuse_version": __version__,
            "arch": getattr(model, "arch", None), "param_groups": sd["param_groups"],
            "optim_plain": plain, **info}
    write_tensors(path, tensors, meta)


def load_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what `save_state` wrote into `model` and `optimizer`; return the stored info."""
    tensors, meta = read_tensors(path)
    if not meta or meta.get("format") != "modefuse-train-state":
        raise CheckpointError(f"{path} is not a training-state file; remove it to start training afresh")
    _fill(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta.get("optim_plain", {}).items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its optimizer state does not fit this run ({e}); "
                              f"remove it to start training afresh") from None
    return meta
