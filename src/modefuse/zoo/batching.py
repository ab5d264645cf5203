"""One way to get `(inputs, targets)` batches from whatever a user calls "data".

Accepted everywhere modefuse takes `data`: a `modefuse.data.ImageDataset`
(sliced directly: no per-example Python calls), any map-style Dataset, a
DataLoader or other iterable of `(x, y)` batches, an `(x, y)` pair of tensors,
or a tensor of inputs alone (targets are then `None`). Models that take keyword inputs
(encoder-decoders: `input_ids`, `decoder_input_ids`) take a dict of equal-length tensors, or
an iterable of such dicts, as inputs (targets `None`; the keys the model was traced with are read).
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
            if seen + rows(x) > limit:
                x, y = _head(x, limit - seen), (None if y is None else y[: limit - seen])
        seen += rows(x)
        if device is not None:
            x, y = on_device(x, device), on_device(y, device)
        yield x, y


def on_device(x, device):
    """Inputs on `device`: a tensor, or the tensors of a tuple or dict of keyword inputs (others as they are)."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, tuple):
        return tuple(on_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: on_device(v, device) for k, v in x.items()}
    return x


def rows(x) -> int:
    """Examples in a batch of inputs (a tensor, or a dict of keyword inputs)."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _head(x, n: int):
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def _raw_batches(data, batch_size, shuffle, generator) -> Iterator[Batch]:
    if isinstance(data, ImageDataset):
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
            yield data.images[idx].float().div_(255), data.targets[idx]
    elif isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        n = {len(v) for v in data.values()}
        if len(n) != 1:
            raise ValueError(f"the keyword inputs have different numbers of examples: "
                             f"{ {k: len(v) for k, v in data.items()} }")
        order = torch.randperm(n.pop(), generator=generator) if shuffle else torch.arange(len(next(iter(
            data.values()))))
        for i in range(0, len(order), batch_size):
            yield {k: v[order[i:i + batch_size]] for k, v in data.items()}, None
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
        if isinstance(item, (torch.Tensor, dict)):
            yield item, None
        else:
            yield item[0], item[1]


def first_inputs(data, n: int = 2) -> torch.Tensor:
    """The first `n` inputs of `data`: an example input for tracing a model."""
    x, _ = next(iter(batches(data, batch_size=n, limit=n)))
    return x
