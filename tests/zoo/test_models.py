import pytest
import torch

import modefuse as mf
from zoo_instances import INPUTS, ZOO, build


@pytest.mark.parametrize("input_kind", list(INPUTS))
@pytest.mark.parametrize("key", list(ZOO))
def test_zoo_forward_and_checkpoint_round_trip(key, input_kind, tmp_path):
    model = build(key, input_kind).eval()
    x = torch.rand(3, *INPUTS[input_kind])
    out = model(x)
    assert out.shape == (3, 10)
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model.train()
        model(torch.rand(8, *INPUTS[input_kind]))  # move the running statistics away from their init
        model.eval()
        out = model(x)
    path = mf.save(model, tmp_path / "m.safetensors", dataset="test", seed=0)
    back = mf.load(path).eval()
    assert type(back) is type(model) and back.arch == model.arch
    assert torch.equal(back(x), out)
    assert back.checkpoint_metadata["dataset"] == "test"


def test_seed_fixes_initialization():
    a, b, c = (mf.models.build("mlp", widths=[8], seed=s) for s in (3, 3, 4))
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)


def test_paper_architectures():
    mlp = mf.models.build("mlp", widths=[400, 200, 100])
    assert [m.out_features for m in mlp.layers] == [400, 200, 100, 10]
    vgg = mf.models.build("vgg11", in_channels=1, in_size=28)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 8
    r20 = mf.models.build("resnet20")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in r20.modules()) == 21  # 19 + 2 shortcut convs
    r18 = mf.models.build("resnet18")
    assert r18.fc.in_features == 512
    assert mf.models.build("lstm").rnn.hidden_size == 256


def test_build_errors_name_the_problem():
    with pytest.raises(mf.ModefuseError, match="unknown model 'transformer'"):
        mf.models.build("transformer")
    with pytest.raises(mf.ModefuseError, match="takes no argument 'depth'.*widths"):
        mf.models.build("mlp", depth=3)
    with pytest.raises(mf.ModefuseError, match="norm"):
        mf.models.build("resnet", norm="instance")
