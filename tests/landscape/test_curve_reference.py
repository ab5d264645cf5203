"""`mf.fit_curve` against an independent reference written here from the formulas alone (Garipov et al.
2018, Tatro et al. 2020; torch autograd and torch.optim, no modefuse code) on real trained MLPs.

The curve is phi(t) = (1 - t)^2 a + 2 t (1 - t) m + t^2 b (Bezier) or the polychain through m; its middle
point m starts at (a + b) / 2 and is trained by SGD on E_t L(phi(t)), one t ~ U[0, 1] per batch, with a
cosine learning rate lr / 2 (1 + cos(pi k / K)) at step k of K. Full-batch, so the batch order cannot
differ; the t of each step is drawn from a generator seeded with the curve's seed.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import modefuse as mf


def mlp_forward(params, x):
    """The zoo MLP's function, written out: ReLU between affine layers."""
    h = x.flatten(1)
    n = len(params) // 2
    for i in range(n):
        h = h @ params[2 * i].T + params[2 * i + 1]
        if i < n - 1:
            h = torch.relu(h)
    return h


def point(kind, t, a, m, b):
    if kind == "bezier":
        ca, cm, cb = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    else:
        ca, cm, cb = (1 - 2 * t, 2 * t, 0.0) if t <= 0.5 else (0.0, 2 - 2 * t, 2 * t - 1)
    return [ca * pa + cm * pm + cb * pb for pa, pm, pb in zip(a, m, b)]


def reference_curve(a, b, x, y, kind, steps, lr, seed):
    """The middle point after `steps` full-batch SGD steps (momentum 0.9) on the curve's loss."""
    a = [p.detach().clone() for p in a]
    b = [p.detach().clone() for p in b]
    m = [((pa + pb) / 2).requires_grad_(True) for pa, pb in zip(a, b)]
    opt = torch.optim.SGD(m, lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for k in range(steps):
        t = torch.rand((), generator=gen).item()
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * k / steps))
        loss = F.cross_entropy(mlp_forward(point(kind, t, a, m, b), x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach() for p in m]


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_fit_curve_trains_the_middle_point_the_formulas_give(fmnist_train, kind):
    data = fmnist_train.subset(range(512))
    ends = []
    for seed in (0, 1):  # real trained endpoints
        m = mf.models.build("mlp", widths=[64, 32], seed=seed)
        mf.train(m, fmnist_train.subset(range(3000)), epochs=1, seed=seed, progress=False)
        ends.append(m)
    a, b = ends
    curve = mf.fit_curve(a, b, data, kind=kind, epochs=4, lr=0.05, optimizer="sgd", batch_size=512, seed=3,
                         progress=False)
    x = data.images.float().div(255)
    y = data.targets
    flat = lambda model: [p for layer in model.layers for p in (layer.weight, layer.bias)]  # noqa: E731
    expected = reference_curve(flat(a), flat(b), x, y, kind, steps=4, lr=0.05, seed=3)
    got = [p.detach() for p in flat(curve.middle)]
    start = [(pa + pb).detach() / 2 for pa, pb in zip(flat(a), flat(b))]
    assert max((e - s).abs().max().item() for e, s in zip(expected, start)) > 1e-3  # it did move
    for e, g in zip(expected, got):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-4)
