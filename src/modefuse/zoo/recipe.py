"""The training recipe: one frozen record of how a model (or a curve's middle point) is trained.

`mf.train`, `fit_curve`, `pam`, `trained` (the experiments' cached models) and the command line all
take a `Recipe`; each still accepts the recipe's fields as keyword arguments, which replace the
recipe's (`train(m, data, Recipe(lr=0.01), epochs=3)`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from ..checks import fraction_below_one, nonneg_float, nonneg_int, one_of, positive_float, positive_int
from ..errors import InvalidArgumentError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class Recipe:
    """How to train, checked when made and never changed after (make another with `replace`).

    Parameters
    ----------
    epochs : int
        Passes over the data (0 trains nothing).
    lr : float
        Peak learning rate.
    optimizer : {"adam", "sgd"}
        SGD uses `momentum`; both use `weight_decay`.
    batch_size : int
        Examples per step.
    schedule : {"cosine", "step", "constant"}
        Learning rate per step: cosine to zero, x0.1 at 50% and 75% of the steps, or constant.
    momentum, weight_decay : float
        SGD's momentum in [0, 1); L2 penalty >= 0.
    seed : int
        Batch order and in-model randomness (dropout): the same seed gives the same weights on CPU.
    """

    epochs: int = 5
    lr: float = 1e-3
    optimizer: str = "adam"
    batch_size: int = 128
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        checked = {"epochs": nonneg_int(self.epochs, "epochs"), "lr": positive_float(self.lr, "lr"),
                   "optimizer": one_of(self.optimizer, OPTIMIZERS, "optimizer"),
                   "batch_size": positive_int(self.batch_size, "batch_size"),
                   "schedule": one_of(self.schedule, SCHEDULES, "schedule"),
                   "momentum": fraction_below_one(self.momentum, "momentum"),
                   "weight_decay": nonneg_float(self.weight_decay, "weight_decay"),
                   "seed": nonneg_int(self.seed, "seed")}
        for k, v in checked.items():
            object.__setattr__(self, k, v)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate at `step` of `total` steps under this recipe's schedule."""
        return lr_at(self.schedule, self.lr, step, total)

    def make_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with `changes` (None values are ignored, so optional arguments pass straight through)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise InvalidArgumentError(f"{', '.join(unknown)} is not part of a training recipe; "
                                       f"its fields are {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the default recipe (how checkpoints describe it)."""
        return {k: v for k, v in self.to_dict().items() if v != getattr(DEFAULT, k)}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "Recipe":
        return DEFAULT.replace(**dict(fields))


def lr_at(schedule: str, lr: float, step: int, total: int) -> float:
    """Learning rate at `step` of `total`: "cosine" to zero, "step" (x0.1 at 50% and 75%) or "constant"."""
    frac = step / max(total, 1)
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * frac))
    if schedule == "step":
        return lr * (0.1 ** ((frac >= 0.5) + (frac >= 0.75)))
    if schedule == "constant":
        return lr
    raise InvalidArgumentError(f"unknown schedule {schedule!r}; use 'cosine', 'step' or 'constant'")


FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
DEFAULT = Recipe()


def recipe_of(recipe: Recipe | None = None, **fields: Any) -> Recipe:
    """`recipe` (default: the default recipe) with the given fields replaced; None fields keep the recipe's."""
    if recipe is not None and not isinstance(recipe, Recipe):
        raise InvalidArgumentError(f"recipe must be a modefuse Recipe, got {type(recipe).__name__} "
                                   f"(pass epochs= and the other fields by name)")
    return (recipe or DEFAULT).replace(**fields)
