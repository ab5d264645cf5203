"""One way to get `(inputs, targets)` batches from whatever a user calls "data".

Accepted everywhere modefuse takes `data`: a `modefuse.data.ImageDataset`
(sliced directly: no per-example Python calls), any map-style Dataset, a
DataLoader or other iterable of `(x, y)` batches, an `(x, y)` pair of tensors,
or a tensor of inputs alone (targets are then `None`).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .data import ImageDataset

Batch = tuple[torch.Tensor, "torch.Tensor | None"]


def batches(data, batch_size: int = 500, shuffle: bool = False, generator: torch.Generator | None = None,
            device: torch.device | str | None = None, limit: int | None = None) -> Iterator[Batch]:
    """Yield `(x, y)` batches from `data`; `limit` stops after that many examples."""
    seen = 0
    for x, y in _raw_batches(data, batch_size, shuffle, generator):
        if limit is not None:
            if seen >= limit:
                return
            if seen + len(x) > limit:
                x, y = x[: limit - seen], (None if y is None else y[: limit - seen])
        seen += len(x)
        if device is not None:
            x = x.to(device, non_blocking=True)
            y = None if y is None else y.to(device, non_blocking=True)
        yield x, y


def _raw_batches(data, batch_size, shuffle, generator) -> Iterator[Batch]:
    if isinstance(data, ImageDataset):
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
            yield data.images[idx].float().div_(255), data.targets[idx]
    elif isinstance(data, torch.Tensor):
        order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
        for i in range(0, len(data), batch_size):
            yield data[order[i:i + batch_size]], None
    elif (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
          and len(data[0]) == len(data[1])):
        x, y = data
        order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
        for i in range(0, len(x), batch_size):
            j = order[i:i + batch_size]
            yield x[j], y[j]
    elif isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        yield from _unpack(DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator))
    else:  # a DataLoader or any iterable of batches
        yield from _unpack(data)


def _unpack(loader) -> Iterator[Batch]:
    for item in loader:
        if isinstance(item, torch.Tensor):
            yield item, None
        else:
            yield item[0], item[1]


def first_inputs(data, n: int = 2) -> torch.Tensor:
    """The first `n` inputs of `data`: an example input for tracing a model."""
    x, _ = next(iter(batches(data, batch_size=n, limit=n)))
    return x
