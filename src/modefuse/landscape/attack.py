"""L-infinity PGD (Madry et al. 2018): adversarial training of endpoints and robust accuracy of paths."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..zoo.batching import batches
from ..checks import nonneg_float, nonneg_int


@dataclass
class PGD:
    """eps, step_size: L-inf radius and step (inputs in [0, 1]); random start inside the ball."""

    eps: float = 8 / 255
    steps: int = 5
    step_size: float = 2 / 255
    seed: int | None = None

    def __post_init__(self):
        self.eps = nonneg_float(self.eps, "eps")
        self.steps = nonneg_int(self.steps, "steps")
        self.step_size = nonneg_float(self.step_size, "step_size")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for `model` (evaluated in eval mode; its mode is restored)."""
        was = model.training
        model.eval()
        gen = torch.Generator(device=x.device).manual_seed(self.seed) if self.seed is not None else None
        delta = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * self.eps
        adv = (x + delta).clamp(0, 1).detach()
        try:
            for _ in range(self.steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), y)
                (grad,) = torch.autograd.grad(loss, adv)
                adv = adv.detach() + self.step_size * grad.sign()
                adv = torch.min(torch.max(adv, x - self.eps), x + self.eps).clamp(0, 1).detach()
        finally:
            model.train(was)
        return adv


def robust_accuracy(model: nn.Module, data, attack: PGD, limit: int | None = 2000, batch_size: int = 500) -> float:
    """Accuracy of `model` on `attack`'s adversarial examples of (the first `limit` examples of) `data`."""
    correct = n = 0
    device = next(model.parameters()).device
    for x, y in batches(data, batch_size, device=device, limit=limit):
        adv = attack(model, x, y)
        with torch.no_grad():
            correct += (model.eval()(adv).argmax(1) == y).sum().item()
        n += len(y)
    return correct / max(n, 1)
