"""The library on a GPU: same answers as on the CPU (products on the GPU, assignments and exact OT on the CPU).

Marked `gpu` and kept out of the default run (nothing may require a GPU); run on a machine with one:
`make test-gpu` (`pytest -m gpu`). Without CUDA these tests fail rather than pass vacuously.
"""
from __future__ import annotations

import copy

import pytest
import torch

import modefuse as mf
from modefuse.match.align import permuted_copy

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(scope="module", autouse=True)
def need_cuda():
    assert torch.cuda.is_available(), "these tests need a CUDA GPU (run them where one is, with `make test-gpu`)"


def pair(name, **kw):
    return [mf.models.build(name, seed=s, **kw).eval() for s in (0, 1)]


@pytest.mark.parametrize("name,kw", [("mlp", {"widths": [256, 256]}), ("resnet20", {"width": 2, "in_channels": 1})])
def test_weight_matching_same_permutations_on_gpu(name, kw):
    a, b = pair(name, **kw)
    x = torch.rand(4, 1, 28, 28)
    cpu = mf.align(a, b, method="weight", example_input=x, tol=0)
    gpu = mf.align(copy.deepcopy(a).to(CUDA), copy.deepcopy(b).to(CUDA), method="weight", example_input=x.to(CUDA),
                   tol=0)
    assert set(cpu.perms) == set(gpu.perms)
    for g, p in cpu.perms.items():
        assert torch.equal(p, gpu.perms[g].cpu()), g
    assert next(gpu.model.parameters()).device.type == "cuda"
    with torch.no_grad():
        y, z = b(x), gpu.model(x.to(CUDA)).cpu()
    assert torch.allclose(y, z, atol=1e-5, rtol=1e-5)  # a permutation keeps the function, on the GPU too


def test_planted_permutation_undone_on_gpu():
    a = mf.models.build("resnet20", width=2, in_channels=1, seed=0).eval().to(CUDA)
    x = torch.rand(4, 1, 28, 28, device=CUDA)
    spec = mf.infer_spec(a, x)
    g = torch.Generator().manual_seed(3)
    perms = {k: torch.randperm(n, generator=g).to(CUDA) for k, n in spec.sizes.items()}
    b = permuted_copy(a, spec, perms)
    assert not torch.equal(a.state_dict()["conv1.weight"], b.state_dict()["conv1.weight"])
    found = mf.align(a, b, method="weight", example_input=x, tol=0)
    for k, t in a.state_dict().items():  # every planted shuffle undone: a's own tensors back, exactly
        assert torch.equal(t, found.model.state_dict()[k]), k



def test_activation_matching_and_fusion_on_gpu():
    a, b = pair("mlp", widths=[128, 64])
    x = torch.rand(256, 1, 28, 28)
    cpu = mf.align(a, b, method="activation", data=x)
    gpu = mf.align(copy.deepcopy(a).to(CUDA), copy.deepcopy(b).to(CUDA), method="activation", data=x.to(CUDA))
    agree = sum(int((cpu.perms[g] == gpu.perms[g].cpu()).sum()) for g in cpu.perms)
    total = sum(len(p) for p in cpu.perms.values())
    assert agree >= 0.99 * total  # correlations in another summation order: near-ties may flip
    for method in ("otfusion", "wasserstein"):
        f_cpu = mf.fuse([a, b], method=method, cost="weight")
        f_gpu = mf.fuse([copy.deepcopy(m).to(CUDA) for m in (a, b)], method=method, cost="weight")
        for k, t in f_cpu.model.state_dict().items():
            u = f_gpu.model.state_dict()[k]
            assert u.device.type == "cuda", k
            assert torch.allclose(t, u.cpu(), atol=1e-4, rtol=1e-4), (method, k)


def test_interpolate_on_gpu():
    a, b = (m.to(CUDA) for m in pair("mlp", widths=[64]))
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(200, 1, 28, 28, generator=g), torch.randint(0, 10, (200,),
                                                                                                   generator=g))
    path = mf.interpolate(a, b, data, steps=3, progress=False)
    cpu = mf.interpolate(a.cpu(), b.cpu(), data, steps=3, progress=False)
    assert abs(path.loss_barrier - cpu.loss_barrier) < 1e-4


def test_repair_and_fusion_into_other_widths_with_data_on_the_cpu():
    """Models on the GPU, a dataset on the CPU (the zoo's, a TensorDataset): tracing, activations and
    REPAIR find the models' device; a fusion into other widths is built there."""
    ms = [m.to(CUDA) for m in pair("mlp", widths=[64, 32])]
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,),
                                                                                                   generator=g))
    fus = mf.fuse(ms, method="wasserstein", widths=[96, 48], cost="activation", data=data)
    assert next(fus.model.parameters()).device.type == "cuda"
    repaired = mf.repair(fus.model, ms, data, couplings=fus.couplings)
    cpu = mf.fuse([copy.deepcopy(m).cpu() for m in ms], method="wasserstein", widths=[96, 48], cost="activation",
                  data=data)
    x = torch.rand(32, 1, 28, 28, generator=g)
    assert torch.allclose(fus.model(x.to(CUDA)).cpu(), cpu.model(x), atol=1e-3)
    assert torch.isfinite(repaired(x.to(CUDA))).all()


@pytest.mark.parametrize("method", ["regmean", "zipit"])
def test_methods_reading_data_on_gpu_models_with_data_on_the_cpu(method):
    """RegMean's Gram matrices (conv: unfolded patches) and ZipIt!'s correlations on the models' device: an MLP
    fuses to the CPU's model, a VGG runs there (cuDNN's TF32 convolutions may break near-ties otherwise)."""
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,),
                                                                                                   generator=g))
    x = torch.rand(16, 1, 28, 28, generator=g)
    ms = [m.to(CUDA) for m in pair("mlp", widths=[64, 32])]
    fus = mf.fuse(ms, method=method, data=data)
    assert next(fus.model.parameters()).device.type == "cuda"
    cpu = mf.fuse([copy.deepcopy(m).cpu() for m in ms], method=method, data=data)
    with torch.no_grad():
        out, ref = fus.model(x.to(CUDA)).cpu(), cpu.model(x)
    assert torch.allclose(out, ref, atol=1e-4 * float(ref.abs().max())), float((out - ref).abs().max())
    vggs = [m.to(CUDA) for m in pair("vgg", width=0.125, in_channels=1, in_size=28)]
    vgg = mf.fuse(vggs, method=method, data=data)
    repaired = mf.repair(vgg.model, vggs, data, couplings=vgg.couplings)  # couplings on the models' device
    with torch.no_grad():
        assert next(repaired.parameters()).device.type == "cuda" and torch.isfinite(repaired(x.to(CUDA))).all()
