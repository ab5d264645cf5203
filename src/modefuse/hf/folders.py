"""Hugging Face model folders (`config.json` + `*.safetensors`, sharded or not) as first-class inputs.

`align_folders` aligns model B's folder to model A's by weight matching without loading either
model: the spec comes from the architecture built on the meta device (no weights), the scores are
accumulated a tensor at a time from the checkpoints (`LazyState`), and the permuted checkpoint is
written tensor by tensor. Peak memory is the score matrices and a few tensors, not the models, so
checkpoints larger than memory can be aligned. The output folder loads with `from_pretrained` as
the same class: B's config, tokenizer and other small files are copied beside the weights.
`fuse_folders` and `interpolate_folders` (causal language models, next-token loss on a text) load
the models in memory.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..storage.atomic import atomic_dir
from ..errors import CheckpointError, ModefuseError
from ..storage.lazystate import LazyState, weight_files, write_streamed
from ..spec.permutation_spec import PermutationSpec
from ..storage.statedict import check_finite, check_same_architecture
from ..spec.transport import moved_units, permute_tensor

# the files copied beside the weights (configs, tokenizers); weights in other formats are never copied:
# they would hold the unaligned model
COPIED = (".json", ".txt", ".model", ".tiktoken", ".md", ".jinja")


def is_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a Hugging Face model folder (a config.json beside the weights)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _model_class(folder: Path):
    """The transformers class the folder's config names, and the config."""
    try:
        import transformers
    except ImportError:
        raise ModefuseError("Hugging Face folders need transformers: pip install transformers") from None
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/config.json cannot be read: {e}") from None
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise ModefuseError(f"{folder}/config.json names no model class transformers has "
                            f"(architectures: {names}); load the model yourself and use mf.align")
    return cls, config


def skeleton(folder: str | os.PathLike) -> nn.Module:
    """The folder's model class built from its config on the meta device: the architecture, no weights."""
    cls, config = _model_class(Path(folder))
    if hasattr(config, "use_cache"):
        config.use_cache = False  # a key-value cache in the outputs is not a tensor export can return
    with torch.device("meta"):
        model = cls(config)
    return model.eval()


def example_input(model: nn.Module) -> tuple[dict, list[int] | None]:
    """A small input for tracing (and the outputs to keep): token ids or pixels, from the model's config."""
    cfg = model.config
    name = getattr(model, "main_input_name", "input_ids")
    if name == "input_ids":
        x = {"input_ids": torch.ones(1, 8, dtype=torch.long)}
        if getattr(cfg, "is_encoder_decoder", False):
            x["decoder_input_ids"] = torch.ones(1, 8, dtype=torch.long)
            return x, [0]  # an encoder-decoder also returns the encoder's states: keep only the logits fixed
        return x, None
    if name == "pixel_values":
        size = getattr(cfg, "image_size", 224)
        size = size if isinstance(size, int) else int(size[0])
        return {"pixel_values": torch.zeros(1, getattr(cfg, "num_channels", 3), size, size)}, None
    raise ModefuseError(f"{type(model).__name__} takes {name!r}: build it yourself, infer its spec with "
                        f"mf.infer_spec(model, example_input) and align with mf.align")


@dataclass
class FolderAlignment:
    """What `align_folders` did: the permutations, the objective per sweep, and where it wrote."""

    out: Path
    perms: dict[str, torch.Tensor]
    spec: PermutationSpec
    history: list[float]
    seconds: float


def align_folders(reference: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                  max_sweeps: int = 100, tol: float = 1e-3, progress: bool = True,
                  spec: PermutationSpec | None = None) -> FolderAlignment:
    """Weight-match folder `model` to folder `reference` and write the aligned model to folder `out`.

    Weight matching (Ainsworth et al. 2022) as in `mf.align`, for checkpoints larger than memory:
    neither model is loaded whole (the spec comes from the architecture built on the meta device, the
    scores are accumulated a tensor at a time and the permuted checkpoint is written tensor by tensor,
    shard by shard as in `model`). `out` loads with `from_pretrained` as the same class: `model`'s config,
    tokenizer and other small files are copied beside the weights (weights in other formats never are).

    Parameters
    ----------
    reference : str or PathLike
        Folder of model A (`config.json` and `*.safetensors`), whose unit order is kept.
    model : str or PathLike
        Folder of model B, of the same architecture, whose units are permuted.
    out : str or PathLike
        The output folder. It appears complete or not at all (written beside it under a temporary
        name, then renamed); an existing `out` is replaced.
    seed : int
        Order of the groups in weight matching's sweeps.
    max_sweeps, tol : int, float
        Weight matching stops after `max_sweeps` sweeps, or when one raises the objective by less than
        `tol` times its value.
    progress : bool
        A progress bar per sweep.
    spec : PermutationSpec, optional
        A hand-written (or edited) spec in the model's tensor names, for a class export cannot trace.

    Returns
    -------
    FolderAlignment
        The output folder, the permutations, the spec (in the checkpoint's tensor names), the objective
        after each sweep and the seconds taken.
    """
    from ..match.weight_matching import weight_matching

    t0 = time.perf_counter()
    reference, model, out = Path(reference), Path(model), Path(out)
    for p in (reference, model):
        if not is_folder(p):
            raise CheckpointError(f"{p} is not a Hugging Face model folder (config.json and *.safetensors)")
    a, b = LazyState(reference), LazyState(model)
    check_same_architecture(a.meta_tensors(), b.meta_tensors(), str(reference), str(model))
    skel = skeleton(reference)
    if spec is None:
        from ..spec.infer import infer_spec
        x, outputs = example_input(skel)
        spec = infer_spec(skel, x, outputs=outputs)
    spec = _restrict(spec, skel, a, reference)
    for name, state in ((reference, a), (model, b)):
        for k in state:  # a tensor at a time
            check_finite({k: state[k]}, str(name))
    perms, history = weight_matching(spec, a, b, seed=seed, max_sweeps=max_sweeps, tol=tol, progress=progress)
    _write_folder(model, out, b, spec, perms)
    return FolderAlignment(out, perms, spec, history, time.perf_counter() - t0)


def load_folder(folder: str | os.PathLike) -> nn.Module:
    """The folder's model in memory (`from_pretrained`, safetensors only: pickled weights are never read)."""
    cls, _ = _model_class(Path(folder))
    try:
        return cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load {folder}: {str(e).splitlines()[0]}") from None


def fuse_folders(folders: list[str | os.PathLike], out: str | os.PathLike, method: str = "wasserstein",
                 **options):
    """Fuse the models of `folders` (in memory, `mf.fuse` with `options`) and write the result to folder
    `out` (model 0's config and tokenizer files beside it; `out` appears complete or not at all).

    `mf.fuse` for Hugging Face folders: each model is loaded with `from_pretrained` (safetensors only)
    and traced with a small input built from model 0's config; the fused model is written with
    `save_pretrained`.

    Parameters
    ----------
    folders : list of str or PathLike
        The models' folders (`config.json` and `*.safetensors`).
    out : str or PathLike
        The output folder; an existing one is replaced.
    method : str
        The fusion method, as in `mf.fuse`.
    **options
        Further arguments of `mf.fuse` (weights, widths, cost, ...).

    Returns
    -------
    Fusion
        What `mf.fuse` returns.
    """
    from ..merge.fuse import fuse

    models = [load_folder(f) for f in folders]
    x, _ = example_input(models[0])
    fus = fuse(models, method=method, example_input=x, **options)
    with _output_folder(Path(out)) as tmp:
        _copy_small_files(Path(folders[0]), tmp)
        fus.model.save_pretrained(str(tmp), safe_serialization=True)
    return fus


def interpolate_folders(a: str | os.PathLike, b: str | os.PathLike, text: str | os.PathLike, steps: int = 25,
                        align: bool = False, block: int = 128, limit: int | None = None, seed: int = 0,
                        progress: bool = True) -> dict:
    """Next-token loss and accuracy on `text` along the straight line from folder `a` to folder `b`.

    `mf.interpolate` for causal language models: {"naive": PathMetrics} and, with `align`,
    {"aligned (weight)": PathMetrics}, B first weight-matched to A. The text is tokenized with A's
    tokenizer and cut into blocks of `block` tokens (`limit`: at most that many blocks). Both models are
    held in memory.

    Parameters
    ----------
    a, b : str or PathLike
        Folders of the two models (same architecture, causal language models).
    text : str or PathLike
        A UTF-8 text file; non-overlapping blocks of it are the examples (tokens, the tokens one step
        later).
    steps : int
        Evenly spaced points on the line, ends included.
    align : bool
        Also evaluate the line to B weight-matched to A (`mf.align`, method "weight").
    block : int
        Tokens per block, shortened to the longest sequence the model's positions allow.
    limit : int, optional
        At most that many blocks.
    seed : int
        Order of the groups in weight matching's sweeps.
    progress : bool
        A progress bar over the points.

    Returns
    -------
    dict of str to PathMetrics
        "naive" and, with `align`, "aligned (weight)".
    """
    from ..match.align import align as align_models
    from ..landscape.interpolate import interpolate
    from .textdata import NextToken, check_causal_lm, max_block, token_blocks

    ma, mb = load_folder(a), load_folder(b)
    for m, where in ((ma, a), (mb, b)):
        check_causal_lm(m, str(where))
        m.config.use_cache = False  # a key-value cache in the outputs is not a tensor export can return
    check_same_architecture(ma.state_dict(), mb.state_dict(), str(a), str(b))
    data = token_blocks(a, text, max_block(ma, block), limit)
    paths = {"naive": interpolate(NextToken(ma), NextToken(mb), data, steps=steps, progress=progress)}
    if align:
        x, _ = example_input(ma)
        aligned = align_models(ma, mb, method="weight", example_input=x, seed=seed).model
        paths["aligned (weight)"] = interpolate(NextToken(ma), NextToken(aligned), data, steps=steps,
                                                progress=progress)
    return paths


def _stored_names(skel: nn.Module) -> dict[str, str]:
    """Model tensor name -> the name the checkpoint stores it under (transformers 5 renames some on save)."""
    state = skel.state_dict()
    try:
        from transformers.modeling_utils import revert_weight_conversion
    except ImportError:  # older transformers: stored as named
        return {k: k for k in state}
    names = {}
    for k, t in state.items():
        out = revert_weight_conversion(skel, {k: t})
        if len(out) != 1 or tuple(next(iter(out.values())).shape) != tuple(t.shape):  # not a plain renaming
            raise ModefuseError(f"{type(skel).__name__} stores {k!r} merged with or split from other tensors "
                                f"(transformers converts its checkpoints on load); load the models with "
                                f"from_pretrained and use mf.align")
        names[k] = next(iter(out))
    return names


def _restrict(spec: PermutationSpec, skel: nn.Module, state: LazyState, folder: Path) -> PermutationSpec:
    """The spec in the checkpoint's names, without the tensors it does not store: tied weights (GPT-2's
    lm_head is its embedding) are stored once and move with the one stored."""
    stored, names = set(state), _stored_names(skel)
    names.update({k: k for k in stored if k not in names})  # a spec already in the stored names is taken as it is
    by_param: dict[int, list[str]] = {}
    for k, p in [*skel.named_parameters(remove_duplicate=False), *skel.named_buffers(remove_duplicate=False)]:
        by_param.setdefault(id(p), []).append(k)
    tied = {k: ks for ks in by_param.values() for k in ks}
    groups = {}
    for g, entries in spec.groups.items():
        kept = []
        for k, a in entries:
            if names[k] in stored:
                kept.append((names[k], a))
            elif not any(names[t] in stored for t in tied.get(k, [])):
                raise CheckpointError(f"{folder} lacks tensor {names[k]!r}, which {type(skel).__name__} has; the "
                                      f"folder was saved from another model class or is incomplete")
        if kept:
            groups[g] = kept
    layouts = {(g, names[k], a): lay for (g, k, a), lay in spec.layouts.items() if names[k] in stored}
    contracted = None if spec.contracted is None else {(names[k], a) for k, a in spec.contracted
                                                       if names[k] in stored}
    return PermutationSpec(groups, layouts, {g: spec.sizes[g] for g in groups}, contracted)


def _write_folder(source: Path, out: Path, state: LazyState, spec: PermutationSpec, perms) -> None:
    """Write `state` permuted by `perms`, shard by shard as in `source`, plus its small files, to `out`."""
    axes_of = spec.axes_of
    with _output_folder(out) as tmp:
        for f in weight_files(source):
            keys = [k for k in state if state.file_of[k] == f]
            write_streamed(tmp / f.name, keys, state.shapes, state.dtypes,
                           lambda k: permute_tensor(state[k], k, axes_of[k], spec, perms) if k in axes_of
                           else state[k], metadata=state.metadata.get(f) or {"format": "pt"})
        _copy_small_files(source, tmp)


@contextlib.contextmanager
def _output_folder(out: Path) -> Iterator[Path]:
    """`atomic_dir`, with a failure to write (a full disk) said in one line that names the way out."""
    try:
        with atomic_dir(out) as tmp:
            yield tmp
    except OSError as e:
        raise CheckpointError(f"writing {out} failed ({e.strerror or e}); nothing was left there: free some "
                              f"space or choose another output folder, then run again") from None


def _copy_small_files(source: Path, dest: Path) -> None:
    """The config, tokenizer and card files of `source` (never weights in other formats)."""
    for p in source.iterdir():
        if p.is_file() and p.suffix in COPIED:
            shutil.copy2(p, dest / p.name)


def describe(res: FolderAlignment) -> dict:
    return {"out": str(res.out), "groups": len(res.perms), "units_moved": moved_units(res.perms),
            "sweeps": len(res.history), "seconds": round(res.seconds, 2)}


__all__ = ["align_folders", "fuse_folders", "interpolate_folders", "load_folder", "FolderAlignment", "is_folder", "skeleton",
           "example_input", "describe"]
