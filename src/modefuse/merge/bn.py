"""Recomputing BatchNorm statistics: merged and interpolated weights make the stored ones wrong."""
from __future__ import annotations

import torch
from torch import nn

from ..zoo.batching import batches


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reset_bn(model: nn.Module, data, limit: int | None = 5000, batch_size: int = 500) -> nn.Module:
    """Recompute every BatchNorm's running mean and variance in place on `data` (exact averages).

    Merged and interpolated weights make the stored statistics wrong: averaged statistics do not
    describe the averaged network. The statistics are reset and accumulated as a cumulative average
    over all batches (momentum None) in training mode; each layer's momentum and the model's training
    mode are restored afterwards.

    Parameters
    ----------
    model : nn.Module
        Changed in place; a model without BatchNorm is returned as it is.
    data : batches, Dataset or tensor
        Inputs to run the model on (labels are not read).
    limit : int or None
        At most that many examples of `data` (None: all of them).
    batch_size : int
        Examples per forward pass.

    Returns
    -------
    nn.Module
        `model` itself.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    device = next(model.parameters()).device
    try:
        for x, _ in batches(data, batch_size, device=device, limit=limit):
            model(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return model
