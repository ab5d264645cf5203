"""Units chosen by name (alignment methods, fusion methods, experiments), as mergekit's method registry:
a decorator adds one, and an unknown name is refused naming the ones there are."""
from __future__ import annotations

from typing import Callable, TypeVar

from .errors import ModefuseError

T = TypeVar("T")


class Registry(dict[str, T]):
    """name -> the unit's record, in the order the units were registered."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str, record: Callable[[Callable], T]) -> Callable[[Callable], Callable]:
        """Decorator: `record(fn)` is registered under `name`; the function itself is returned unchanged."""
        def deco(fn: Callable) -> Callable:
            self[name] = record(fn)
            return fn
        return deco

    def unit(self, name: str) -> T:
        """The unit registered as `name`, or a ModefuseError naming the registered ones."""
        if name not in self:
            raise ModefuseError(f"unknown {self.what} {name!r}; use one of {', '.join(self)}")
        return self[name]


def first_line(fn: Callable) -> str:
    """A unit's summary: the first line of its docstring."""
    return (fn.__doc__ or "").strip().split("\n")[0]
