"""Progress bars for long work: live on a terminal, silent in a log.

On a terminal a bar redraws itself in place. Off one (`make bench > log`, a pipe, CI) tqdm
would write every redraw as another carriage-return "line", hundreds of KB per run; there the
bar is off, and loops report what matters in whole lines instead (training prints one line per
epoch with `write`).
"""
from __future__ import annotations

import sys
from typing import Iterable

from tqdm.auto import tqdm


def on_terminal(file=None) -> bool:
    """Whether `file` (default: standard error, where bars go) is a terminal."""
    file = file if file is not None else sys.stderr
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
        enabled: bool = True, leave: bool = False, **kwargs) -> tqdm:
    """A tqdm bar over `iterable`: drawn when `enabled` and standard error is a terminal, else off.

    Use it like tqdm (iterate over it, `set_postfix`, `update`); off a terminal it yields the
    items and prints nothing. Other tqdm arguments pass through `kwargs`.
    """
    show = enabled and on_terminal(kwargs.get("file"))
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=not show,
                dynamic_ncols=True, **kwargs)


def write(message: str) -> None:
    """Print one line to standard output without breaking a bar being drawn."""
    tqdm.write(message)
