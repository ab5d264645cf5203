"""argparse types of `modefuse <command>`: each parses one string or names what is wrong in one line.

The value checks are those of the library (`modefuse.checks`), so `--lr -1` and `mf.train(lr=-1)`
are refused in the same words. Arguments that are wrong only together (a width for a model without
one, --weights of the wrong length) raise `UsageError` from the command, before any work.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable

from . import checks
from .errors import InvalidArgumentError, ModefuseError


class UsageError(ModefuseError):
    """Arguments that do not fit together; the command line exits with status 2, as for argparse's errors."""


def _type(name: str, parse: Callable[[str], object], check: Callable, what: str):
    """An argparse type: `parse` the string (ValueError: not `what`), then `check` the value."""
    def convert(text: str):
        try:
            value = parse(text.strip())
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        try:
            return check(value)
        except InvalidArgumentError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = name
    return convert


positive_int = _type("positive_int", int, checks.positive_int, "a positive integer")
nonneg_int = _type("nonneg_int", int, checks.nonneg_int, "a non-negative integer")
seed = _type("seed", int, checks.nonneg_int, "a non-negative integer")
positive_float = _type("positive_float", float, checks.positive_float, "a positive number")
nonneg_float = _type("nonneg_float", float, checks.nonneg_float, "a non-negative number")
probability = _type("probability", float, checks.probability, "a number in [0, 1]")


def int_at_least(minimum: int):
    """Integers >= minimum (e.g. 2 for the points of a path, which needs both ends)."""
    return _type(f"int_at_least_{minimum}", int, lambda v: checks.int_at_least(v, minimum),
                 f"an integer >= {minimum}")


def _list(name: str, parse, check, what: str, one: str, example: str):
    def convert(text: str):
        items = text.split(",")
        values = []
        for i, item in enumerate(items):
            if not item.strip():
                raise argparse.ArgumentTypeError(f"must be {what} separated by commas (e.g. {example}), got {text!r}: "
                                                 f"item {i + 1} is empty")
            try:
                values.append(check(parse(item.strip())))
            except (ValueError, OverflowError):  # InvalidArgumentError is a ValueError too
                raise argparse.ArgumentTypeError(f"must be {what} separated by commas (e.g. {example}), got "
                                                 f"{text!r}: {item.strip()!r} is not {one}") from None
        return values
    convert.__name__ = name
    return convert


positive_int_list = _list("positive_int_list", int, checks.positive_int, "positive integers", "a positive integer",
                          "300,150,75")
nonneg_float_list = _list("nonneg_float_list", float, checks.nonneg_float, "non-negative numbers",
                          "a non-negative number", "0.7,0.3")


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as JSON when it is JSON (numbers, lists, true/false), else as a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (e.g. num_layers=2), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def dataset(text: str) -> str:
    """A dataset name of `mf.data` (aliases such as fmnist or cifar-10 accepted)."""
    from .zoo.data import NAMES
    name = text.strip().lower().replace("_", "-")
    name = {"fmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(name, name)
    if name not in NAMES:
        raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; choose one of {', '.join(NAMES)}")
    return name


def zoo_model(text: str) -> str:
    """A model name of the zoo (`mf.models`), aliases included."""
    from .zoo.models import ALIASES, names
    known = names() + sorted(ALIASES)
    if text not in known:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; the zoo has: {', '.join(known)}")
    return text


def output_file(text: str) -> str:
    """A file to write: not a directory (missing parent directories are created when it is written)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a file name, got ''")
    p = Path(text)
    if p.is_dir() or text.endswith(os.sep):
        raise argparse.ArgumentTypeError(f"{text} names a directory; name a file to write, e.g. {p / 'model.safetensors'}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is a file, not a directory")
            break
    return text


def png_file(text: str) -> str:
    """A PNG figure to write (the figures are always PNG, so another suffix would mislabel the file)."""
    text = output_file(text)
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"figures are written as PNG: name the file *.png, got {text!r}")
    return text


def output_dir(text: str) -> str:
    """A directory to write into (created when missing), not an existing file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a directory name, got ''")
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; name a directory to write the results into")
    return text


def experiment(text: str) -> str:
    """The name of one of the papers' experiments (`modefuse reproduce --list`)."""
    from .experiments.base import REGISTRY  # the package fills it on import
    if text not in REGISTRY:
        raise argparse.ArgumentTypeError(f"unknown experiment {text!r}; choose one of {', '.join(REGISTRY)} "
                                         f"(`modefuse reproduce --list` says what each shows)")
    return text


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (existing or not)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
