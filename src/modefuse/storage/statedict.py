"""Checks on state_dicts shared by loading, alignment and fusion."""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..errors import ArchitectureMismatchError, CheckpointError


def check_same_architecture(ref: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor],
                            ref_name: str = "model A", other_name: str = "model B") -> None:
    """Raise naming the first tensor in which `other` differs from `ref` in name or shape."""
    ref_keys, other_keys = list(ref), list(other)
    for i, k in enumerate(ref_keys):
        if k not in other:
            raise ArchitectureMismatchError(
                f"architectures differ: {ref_name} has tensor {k!r} which {other_name} lacks"
                + (f" (it has {other_keys[i]!r} at that position)" if i < len(other_keys) else "")
                + "; only models of the same architecture can be aligned or fused this way")
        if tuple(ref[k].shape) != tuple(other[k].shape):
            raise ArchitectureMismatchError(
                f"architectures differ at tensor {k!r}: shape {tuple(ref[k].shape)} in {ref_name} but "
                f"{tuple(other[k].shape)} in {other_name}; use models of the same widths (or fuse with "
                f"method='wasserstein', which accepts different widths)")
    extra = [k for k in other_keys if k not in ref]
    if extra:
        raise ArchitectureMismatchError(
            f"architectures differ: {other_name} has tensor {extra[0]!r} which {ref_name} lacks")


def check_finite(state: Mapping[str, torch.Tensor], where: str = "the model") -> None:
    """Raise naming the first floating tensor holding NaN or infinity."""
    for k, v in state.items():
        # a finite sum proves every entry finite in one pass without a mask; otherwise look closer
        if torch.is_tensor(v) and v.is_floating_point() and not math.isfinite(float(v.sum())) \
                and not torch.isfinite(v).all():
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(
                f"{where}: tensor {k!r} holds {bad} NaN/infinite value(s); the model diverged or the file "
                f"is damaged: retrain it (a lower learning rate) or use another checkpoint")
